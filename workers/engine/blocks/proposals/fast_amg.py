"""A faster automatic mask generator with the output of segment-anything's ``SamAutomaticMaskGenerator``.

Same algorithm and settings as the stock generator (``amg.generator_class``): a point grid per crop, three
masks per point from the prompt decoder, the predicted-IoU filter, the stability-score filter, masks touching
a crop edge dropped, box NMS per crop and across crops. What changes is where the time goes:

- the image is encoded once per crop, and the whole-image embedding can come from the per-image cache
  (``embedding=``) and is handed back, so a later refine click runs only the prompt decoder;
- the prompt decoder runs on large point batches (``decode_batch``) without per-prompt copies of the image
  work (``decoder.decode_points``; ``decoder="stock"`` runs the model's own decoder for bit-equal output);
- the filters run first on the decoder's low-resolution logits (``256 x 256``): the predicted-IoU filter is
  exact there (it does not depend on the mask), and the stability score is computed at low resolution and
  only masks more than ``margin`` below the threshold are dropped. Every full-resolution logit is a convex
  combination of low-resolution ones (bilinear resizing), so a mask with no low-resolution logit above the
  stability thresholds has none at full resolution either; the margin covers the rest (the stock filters are
  then applied, unchanged, to the survivors at full resolution, so the margin can only let more masks reach
  the exact test, never let a mask through it);
- only survivors are upsampled, in small chunks, and thresholded to ``bool`` at once (no full-resolution
  float copies of losers).

``on_progress(points_done, points_total)`` is called after every decoder batch (and once with ``0`` before
the first): the place where a job reports *proposals k of n points* and where a cancellation check may raise
(the exception propagates; nothing is cached).

Source: the stock generator, ``segment_anything/automatic_mask_generator.py`` (Apache-2.0), whose helpers
(``segment_anything.utils.amg``) are used here; MobileSAM's copy is the same algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from segment_anything.utils.amg import (
    batched_mask_to_box,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    uncrop_boxes_xyxy,
    uncrop_masks,
)
from torchvision.ops import batched_nms, box_area

from workers.engine.blocks.masks import Proposals, encode_rle
from workers.engine.blocks.proposals.amg import check_rgb, postprocess_small_regions, predictor_class
from workers.engine.blocks.proposals.config import AmgConfig
from workers.engine.blocks.proposals.decoder import decode_points
from workers.engine.blocks.proposals.refine import ImageEmbedding

#: ``on_progress(points_done, points_total)``; may raise to stop the run (cancellation).
ProgressCallback = Callable[[int, int], None]

#: Default margin below ``stability_score_thresh`` within which a low-resolution stability score still sends
#: a mask to the exact full-resolution test.
DEFAULT_MARGIN = 0.15

#: Default number of grid points through the prompt decoder at once.
DEFAULT_DECODE_BATCH = 128

#: Decoder precisions (``AmgConfig.decoder_precision``) and their torch dtypes (``None``: the modules' own float32).
PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}

#: Survivors upsampled to full resolution at once (bounds memory: ``chunk x 1024 x 1024`` floats).
_UPSAMPLE_CHUNK = 16


@dataclass
class AmgStats:
    """What one run did (benchmarks and tests read it).

    Attributes:
        points: grid points decoded (all crops).
        points_skipped: grid points not decoded because an earlier neighbour's segment covers them
            (``AmgConfig.skip_covered_points``).
        masks_decoded: masks out of the decoder (three per point).
        after_iou: masks past the predicted-IoU filter.
        upsampled: masks past the low-resolution stability pre-filter (upsampled to full resolution).
        after_stability: masks past the exact stability filter.
        kept: masks in the result.
        encoder_calls: image encoder runs (0 when the cached embedding served the whole-image crop).
    """

    points: int = 0
    points_skipped: int = 0
    masks_decoded: int = 0
    after_iou: int = 0
    upsampled: int = 0
    after_stability: int = 0
    kept: int = 0
    encoder_calls: int = 0
    crops: list[int] = field(default_factory=list)


@dataclass
class _CropResult:
    rles: list[dict]
    boxes: torch.Tensor  # N x 4 xyxy in the original image frame (stock's inclusive max)
    iou: torch.Tensor
    stability: torch.Tensor
    crop_box: list[int]


def _empty_crop(crop_box: list[int]) -> _CropResult:
    return _CropResult([], torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0), crop_box)


class FastMaskGenerator:
    """Automatic masks of one SAM / MobileSAM model with the stock generator's output, faster.

    Args:
        sam: a SAM (``segment_anything``) or MobileSAM model, eval, on its device.
        config: the generator settings (segment-anything's defaults).
        decode_batch: grid points through the prompt decoder at once (memory grows with it: about
            ``decode_batch x 16 MB`` for SAM-sized decoders).
        margin: see the module docstring; ``>= 1`` turns the low-resolution pre-filter off.
        decoder: ``"shared"`` (default): :func:`~workers.engine.blocks.proposals.decoder.decode_points`, the
            prompt decoder without per-prompt copies of the image work (equal to float rounding);
            ``"stock"``: the model's own ``MaskDecoder`` as ``SamPredictor.predict_torch`` calls it (the
            stock generator's arithmetic exactly).

    The config's speed settings (off by default, the stock output): ``skip_covered_points`` decodes the grid
    in coarse-to-fine passes (:func:`grid_passes`) and skips a point that lies inside the *segment* of an
    already decoded neighbour at most one pass spacing away (the low-resolution pixels inside all of that
    point's masks that pass the predicted-IoU filter), when the image embeddings at the two points have a
    cosine similarity of at least ``skip_similarity``: its three masks would repeat the neighbour's (a small
    part of a different look inside the neighbour's segment is not skipped, the similarity test keeps it).
    ``decoder_precision="bfloat16"`` runs the shared decoder's per-prompt image-side work in bfloat16
    (``decode_points(dtype=...)``). Both change the output a little; ``scripts/bench_amg.py`` measures how
    much against the stock generator.
    """

    def __init__(
        self,
        sam: torch.nn.Module,
        config: AmgConfig | None = None,
        *,
        decode_batch: int = DEFAULT_DECODE_BATCH,
        margin: float = DEFAULT_MARGIN,
        decoder: str = "shared",
    ) -> None:
        if decoder not in ("shared", "stock"):
            raise ValueError(f"decoder must be 'shared' or 'stock', got {decoder!r}")
        if decode_batch < 1:
            raise ValueError(f"decode_batch must be >= 1, got {decode_batch}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.sam = sam
        self.config = config or AmgConfig()
        self.decode_batch = int(decode_batch)
        self.margin = float(margin)
        self.decoder = decoder
        self.predictor = predictor_class(sam)(sam)
        c = self.config
        self.point_grids = build_all_layer_point_grids(
            c.points_per_side, c.crop_n_layers, c.crop_n_points_downscale_factor
        )
        self.stats = AmgStats()

    # -- public -------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        rgb: np.ndarray,
        *,
        embedding: ImageEmbedding | None = None,
        on_progress: ProgressCallback | None = None,
        on_embedding: Callable[[ImageEmbedding], None] | None = None,
    ) -> tuple[Proposals, ImageEmbedding]:
        """Automatic masks of ``rgb`` (``H x W x 3`` uint8) and SAM's embedding of the whole image.

        Args:
            embedding: the whole image's embedding by this model (from the cache); the encoder then runs only
                for the smaller crops (``crop_n_layers > 0``).
            on_progress: see the module docstring.
            on_embedding: called once with the whole image's embedding as soon as it exists (before the
                first decoder batch), e.g. to cache it for refine clicks while the grid is decoded.

        Returns:
            ``(Proposals, ImageEmbedding)``: RLE masks of ``H x W`` in the stock generator's order (NMS order,
            best first), with predicted IoU and stability score; the whole-image embedding (on the CPU).

        Raises:
            BadInputError: not an ``H x W x 3`` uint8 image.
        """
        rgb = check_rgb(rgb)
        c = self.config
        self.stats = AmgStats()
        orig_size = (int(rgb.shape[0]), int(rgb.shape[1]))
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, c.crop_n_layers, c.crop_overlap_ratio)
        total = sum(len(self.point_grids[layer]) for layer in layer_idxs)
        done = 0
        if on_progress is not None:
            on_progress(0, total)
        results: list[_CropResult] = []
        whole: ImageEmbedding | None = None
        for crop_box, layer in zip(crop_boxes, layer_idxs, strict=True):
            x0, y0, x1, y1 = crop_box
            is_whole = layer == 0
            if not is_whole and (x1 <= x0 or y1 <= y0):  # an empty crop of a tiny image: nothing to embed
                done += len(self.point_grids[layer])
                continue
            self._set_image(rgb[y0:y1, x0:x1, :], embedding if is_whole else None)
            if is_whole:
                whole = self._current_embedding()
                if on_embedding is not None:
                    on_embedding(whole)
            grid = self.point_grids[layer] * np.array([x1 - x0, y1 - y0])[None, :]
            parts: list[_CropResult] = []
            im_size = (y1 - y0, x1 - x0)
            if c.skip_covered_points:
                for part, n_points in self._decode_pruned(grid, im_size, crop_box, orig_size):
                    parts.append(part)
                    done += n_points
                    if on_progress is not None:
                        on_progress(done, total)
            else:
                for start in range(0, len(grid), self.decode_batch):
                    points = grid[start : start + self.decode_batch]
                    parts.append(self._process_batch(points, im_size, crop_box, orig_size))
                    done += len(points)
                    if on_progress is not None:
                        on_progress(done, total)
            results.append(self._nms_crop(parts, crop_box))
            self.stats.crops.append(len(results[-1].rles))
        self.predictor.reset_image()
        proposals = self._merge_crops(results, orig_size)
        if c.min_mask_region_area > 0:
            proposals = postprocess_small_regions(proposals, c.min_mask_region_area, c.box_nms_thresh)
        self.stats.kept = len(proposals)
        assert whole is not None  # layer 0 (the whole image) is always the first crop
        return proposals, whole

    # -- steps --------------------------------------------------------------------------------------
    def _set_image(self, image: np.ndarray, embedding: ImageEmbedding | None) -> None:
        predictor = self.predictor
        if embedding is not None and tuple(embedding.original_size) == tuple(image.shape[:2]):
            predictor.reset_image()
            predictor.features = embedding.features.to(predictor.device)
            predictor.original_size = tuple(embedding.original_size)
            predictor.input_size = tuple(embedding.input_size)
            predictor.is_image_set = True
            return
        predictor.set_image(np.ascontiguousarray(image), image_format="RGB")
        self.stats.encoder_calls += 1

    def _current_embedding(self) -> ImageEmbedding:
        predictor = self.predictor
        return ImageEmbedding(
            features=predictor.features.detach().cpu(),
            original_size=tuple(int(s) for s in predictor.original_size),
            input_size=tuple(int(s) for s in predictor.input_size),
        )

    def _decode(self, points: np.ndarray, im_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits ``(B*3) x 256 x 256`` and predicted IoU ``(B*3)`` for grid points ``B x 2``
        (pixels of the crop), exactly as ``SamPredictor.predict_torch(multimask_output=True)`` makes them."""
        predictor = self.predictor
        model = predictor.model
        transformed = predictor.transform.apply_coords(points, im_size)
        coords = torch.as_tensor(transformed, device=predictor.device)[:, None, :]
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int, device=predictor.device)
        sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        if self.decoder == "shared":
            low_res, iou = decode_points(
                model.mask_decoder,
                predictor.features,
                model.prompt_encoder.get_dense_pe(),
                sparse,
                dense[:1],  # no mask prompt: the same dense embedding for every point
                dtype=PRECISIONS[self.config.decoder_precision],
                min_iou=self.config.pred_iou_thresh if self.config.pred_iou_thresh > 0.0 else None,
            )
            return low_res.flatten(0, 1), iou.flatten(0, 1)
        low_res, iou = model.mask_decoder(
            image_embeddings=predictor.features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        return low_res.flatten(0, 1), iou.flatten(0, 1)

    def _low_res_keep(self, low_res: torch.Tensor) -> torch.Tensor:
        """Which masks go on to the exact full-resolution test (see the module docstring)."""
        c = self.config
        threshold = self.predictor.model.mask_threshold
        input_h, input_w = self.predictor.input_size
        side = self.predictor.model.image_encoder.img_size
        scale = low_res.shape[-1] / side
        valid = low_res[:, : math.ceil(input_h * scale), : math.ceil(input_w * scale)]
        upper = valid > threshold - c.stability_score_offset
        keep = upper.flatten(1).any(dim=1)  # no logit above the low cut: the full-res union is empty too
        if c.stability_score_thresh > 0.0:
            lower = valid > threshold + c.stability_score_offset
            keep &= lower.flatten(1).any(dim=1)  # score 0 at full resolution
            if self.margin < 1.0:
                score = calculate_stability_score(valid, threshold, c.stability_score_offset)
                keep &= score >= c.stability_score_thresh - self.margin
        return keep

    def _decode_pruned(
        self,
        grid: np.ndarray,
        im_size: tuple[int, int],
        crop_box: list[int],
        orig_size: tuple[int, int],
    ) -> Iterator[tuple[_CropResult, int]]:
        """Decode ``grid`` (``n*n x 2`` crop pixels, row-major) pass by pass, skipping covered points.

        Yields ``(result of one decoder batch, grid points it accounts for)``; skipped points are counted
        with the batch after them (or alone, with an empty result, when a pass skips all it has left).
        """
        n = math.isqrt(len(grid))
        rows, cols = np.divmod(np.arange(len(grid)), n)
        transformed = self.predictor.transform.apply_coords(grid, im_size)
        side = self.predictor.model.image_encoder.img_size
        low_side = side // 4  # the decoder's logits are a quarter of the encoder's input side
        low_xy = np.clip((transformed * low_side / side).astype(np.int64), 0, low_side - 1)
        # covers[j][k]: decoded point j's segment holds point k (a row of n*n bools per decoded point, read
        # off its 256 x 256 segment once, instead of keeping every segment).
        covers: dict[int, np.ndarray] = {}
        at_y, at_x = torch.from_numpy(low_xy[:, 1]), torch.from_numpy(low_xy[:, 0])
        features = self.predictor.features[0]  # C x 64 x 64, the crop's image embedding
        cell = np.clip((transformed * features.shape[-1] / side).astype(np.int64), 0, features.shape[-1] - 1)
        look = torch.nn.functional.normalize(features[:, cell[:, 1], cell[:, 0]].T.float(), dim=1)  # n*n x C
        alike = (look @ look.T) >= self.config.skip_similarity  # n*n x n*n
        for members, spacing in grid_passes(n):
            pending = members.tolist()
            while pending:
                batch: list[int] = []
                skipped = 0
                while pending and len(batch) < self.decode_batch:
                    k = pending.pop(0)
                    if self._covered(k, rows, cols, spacing, covers, alike):
                        skipped += 1
                    else:
                        batch.append(k)
                self.stats.points_skipped += skipped
                if not batch:
                    yield _empty_crop(crop_box), skipped
                    continue
                part, segs = self._process_batch(grid[batch], im_size, crop_box, orig_size, segments=True)
                covers.update(zip(batch, segs[:, at_y, at_x].numpy(), strict=True))
                yield part, len(batch) + skipped

    @staticmethod
    def _covered(
        k: int,
        rows: np.ndarray,
        cols: np.ndarray,
        spacing: int,
        covers: dict[int, np.ndarray],
        alike: torch.Tensor,
    ) -> bool:
        """Whether point ``k`` lies in the segment of a decoded point ``j`` at most ``spacing`` rows and
        columns away (``covers[j][k]``) whose image embedding is alike (``alike[k, j]``)."""
        r, c = int(rows[k]), int(cols[k])
        n = int(rows[-1]) + 1
        for rr in range(max(0, r - spacing), min(n, r + spacing + 1)):
            for cc in range(max(0, c - spacing), min(n, c + spacing + 1)):
                j = rr * n + cc
                row = covers.get(j)
                if row is not None and row[k] and bool(alike[k, j]):
                    return True
        return False

    def _process_batch(
        self,
        points: np.ndarray,
        im_size: tuple[int, int],
        crop_box: list[int],
        orig_size: tuple[int, int],
        segments: bool = False,
    ) -> Any:
        """One decoder batch through the filters: a ``_CropResult``; with ``segments``, also each point's
        segment (``B x 256 x 256`` bool: the low-resolution pixels inside all of the point's masks that pass
        the predicted-IoU filter; empty when none passes)."""
        c = self.config
        model = self.predictor.model
        low_res, iou = self._decode(points, im_size)
        if segments:
            inside = low_res.view(len(points), 3, *low_res.shape[-2:]) > model.mask_threshold
            good = (iou.view(len(points), 3) > c.pred_iou_thresh)[:, :, None, None]
            segs = torch.where(good, inside, True).all(dim=1) & good.any(dim=1)
            return self._filter_batch(points, low_res, iou, crop_box, im_size, orig_size), segs
        return self._filter_batch(points, low_res, iou, crop_box, im_size, orig_size)

    def _filter_batch(
        self,
        points: np.ndarray,
        low_res: torch.Tensor,
        iou: torch.Tensor,
        crop_box: list[int],
        im_size: tuple[int, int],
        orig_size: tuple[int, int],
    ) -> _CropResult:
        c = self.config
        model = self.predictor.model
        orig_h, orig_w = orig_size
        self.stats.points += len(points)
        self.stats.masks_decoded += len(iou)
        keep = torch.ones_like(iou, dtype=torch.bool)
        if c.pred_iou_thresh > 0.0:
            keep &= iou > c.pred_iou_thresh
        self.stats.after_iou += int(keep.sum())
        if keep.any():
            idx = torch.nonzero(keep).flatten()
            keep[idx] = self._low_res_keep(low_res[idx])
        idx = torch.nonzero(keep).flatten()
        self.stats.upsampled += len(idx)
        masks: list[torch.Tensor] = []
        stabilities: list[torch.Tensor] = []
        kept_idx: list[torch.Tensor] = []
        for start in range(0, len(idx), _UPSAMPLE_CHUNK):
            chunk = idx[start : start + _UPSAMPLE_CHUNK]
            logits = model.postprocess_masks(low_res[chunk][:, None], self.predictor.input_size, im_size)[
                :, 0
            ]
            stability = calculate_stability_score(logits, model.mask_threshold, c.stability_score_offset)
            good = (
                stability >= c.stability_score_thresh
                if c.stability_score_thresh > 0.0
                else torch.ones_like(stability, dtype=torch.bool)
            )
            if good.any():
                masks.append(logits[good] > model.mask_threshold)
                stabilities.append(stability[good])
                kept_idx.append(chunk[good])
            del logits
        if not masks:
            return _empty_crop(crop_box)
        binary = torch.cat(masks)
        stability = torch.cat(stabilities)
        chosen = torch.cat(kept_idx)
        self.stats.after_stability += len(chosen)
        boxes = batched_mask_to_box(binary)
        near_edge = is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
        if near_edge.all():
            return _empty_crop(crop_box)
        inside = ~near_edge
        binary, boxes, stability, chosen = binary[inside], boxes[inside], stability[inside], chosen[inside]
        full = uncrop_masks(binary, crop_box, orig_h, orig_w)
        return _CropResult(encode_rle(full), boxes, iou[chosen], stability, crop_box)

    def _nms_crop(self, parts: list[_CropResult], crop_box: list[int]) -> _CropResult:
        rles = [r for part in parts for r in part.rles]
        if not rles:
            return _empty_crop(crop_box)
        boxes = torch.cat([p.boxes for p in parts])
        iou = torch.cat([p.iou for p in parts])
        stability = torch.cat([p.stability for p in parts])
        keep = batched_nms(
            boxes.float(), iou, torch.zeros(len(boxes)), iou_threshold=self.config.box_nms_thresh
        ).tolist()
        return _CropResult(
            [rles[i] for i in keep],
            uncrop_boxes_xyxy(boxes[keep], crop_box),
            iou[keep],
            stability[keep],
            crop_box,
        )

    def _merge_crops(self, results: list[_CropResult], orig_size: tuple[int, int]) -> Proposals:
        rles = [r for res in results for r in res.rles]
        if not rles:
            return Proposals.empty(orig_size)
        iou = torch.cat([r.iou for r in results])
        stability = torch.cat([r.stability for r in results])
        order = list(range(len(rles)))
        if len(results) > 1:
            boxes = torch.cat([r.boxes for r in results])
            crop_boxes = torch.tensor([r.crop_box for r in results for _ in r.rles])
            keep = batched_nms(
                boxes.float(),
                1 / box_area(crop_boxes),  # prefer masks from smaller crops, as stock
                torch.zeros(len(boxes)),
                iou_threshold=self.config.crop_nms_thresh,
            )
            order = keep.tolist()
        return Proposals.from_rles(
            [rles[i] for i in order],
            orig_size,
            predicted_iou=[float(iou[i]) for i in order],
            stability_score=[float(stability[i]) for i in order],
        )


def bfloat16_is_fast(device: str | torch.device) -> bool:
    """Whether bfloat16 matrix products run natively on ``device`` (a CUDA GPU that supports them, or a CPU
    with oneDNN's bfloat16 instructions, e.g. AVX512-BF16 / AMX); elsewhere they are emulated and slower."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def grid_passes(n: int, coarsest: int = 4) -> list[tuple[np.ndarray, int]]:
    """An ``n x n`` point grid (row-major indices, as segment-anything builds it) in coarse-to-fine passes.

    First the points whose row and column are multiples of ``coarsest``; then, for each spacing ``s`` from
    ``coarsest // 2`` down to 1, two passes over the points of the ``s`` lattice not yet held: those with
    one odd coordinate (in units of ``s``: the edge midpoints of the coarser lattice), then those with two
    (the cell centres, whose four neighbours ``s`` away the previous pass held). Every point after the first
    pass has a point of an earlier pass at most ``s`` rows and ``s`` columns away. Returns
    ``[(indices, s), ...]``.
    """
    rows, cols = np.divmod(np.arange(n * n), n)
    seen = np.zeros(n * n, dtype=bool)
    passes: list[tuple[np.ndarray, int]] = []

    def add(members: np.ndarray, spacing: int) -> None:
        members &= ~seen
        if members.any():
            passes.append((np.nonzero(members)[0], spacing))
        seen[members] = True

    top = max(1, coarsest)
    add((rows % top == 0) & (cols % top == 0), top)
    spacing = top // 2
    while spacing >= 1:
        on = (rows % spacing == 0) & (cols % spacing == 0)
        odd = ((rows // spacing) % 2) + ((cols // spacing) % 2)
        add(on & (odd == 1), spacing)
        add(on & (odd == 2), spacing)
        spacing //= 2
    return passes


def generate_proposals_fast(
    sam: torch.nn.Module,
    rgb: np.ndarray,
    config: AmgConfig | None = None,
    *,
    embedding: ImageEmbedding | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[Proposals, ImageEmbedding]:
    """Convenience: ``FastMaskGenerator(sam, config).generate(rgb, ...)``."""
    return FastMaskGenerator(sam, config).generate(rgb, embedding=embedding, on_progress=on_progress)
