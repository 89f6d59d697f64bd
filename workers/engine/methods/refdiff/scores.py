"""Ref-Diff's scores of masks: generative (attention), discriminative (CLIP hard and soft), their fusion.

- :func:`generative_scores`: ``s^G_i = mean(A inside mask_i) - mean(A outside)`` for an attention map A.
- :func:`attention_proposals`: the proposal-free mode: masks ``A >= t`` for thresholds t (5 % ... 95 % of
  the normalised map's range by default, or quantiles), empty and repeated masks dropped.
- :func:`ramp_direction` / :func:`positional_ramp`: when the sentence says left (right), the image used
  for the hard crops is multiplied by a ramp from 1 at the left (right) edge to 0 at two thirds of the
  width and 0 beyond, as the public code does. Words are matched whole (``bright`` is not ``right``);
  ``peer_compat`` uses the code's case-sensitive substring test.
- :class:`RegionClipEncoder` on an open_clip ViT (ViT-B/16 in the paper):

  - *hard* feature: the mask's box crop with black outside the mask, resized so its shorter side is 224
    (aspect kept, positional embedding interpolated bicubically to the crop's grid; crops of one size are
    batched) or, with ``hard_crop="square"``, padded square with black and resized to 224 x 224 (all
    crops in one batch); the CLS output, L2-normalised.
  - *soft* feature: the whole image at its own resolution (``soft_max_side`` caps it) with one extra class
    token per mask appended to the patch tokens; an additive attention mask lets class token i attend to
    itself and to the patches of mask i only (the mask resized nearest to the patch grid), and keeps the
    patches from attending to any class token, so the patches are those of the plain image and one
    forward serves a whole chunk of masks. Each class token's output, L2-normalised.

- :func:`fuse_scores`: ``"code"`` = ``0.7 hard + 0.3 soft + 0.05 s^G`` (the public code's weights), or
  ``"paper"`` = ``alpha s^G + (1 - alpha) s^D`` with ``s^D`` the weight-normalised hard/soft mix.
- :func:`kept_for_scoring`: the code's proposal filter: the ``max_proposals`` largest masks whose area
  exceeds ``min_area``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from workers.engine.blocks.clip.config import OPENAI_MEAN, OPENAI_STD
from workers.engine.blocks.clip.tower import ClipTower
from workers.engine.blocks.geometry import pad_square, tight_box_xyxy
from workers.engine.blocks.masks import Proposals
from workers.engine.core.errors import BadInputError, ConfigError
from workers.engine.core.meter import Meter, current_meter
from workers.engine.methods.refdiff.config import (
    FUSION_CHOICES,
    HARD_CROP_CHOICES,
    RAMP_PRECISIONS,
    THRESHOLD_MODES,
    TOPK_TIES,
)

#: Whole words that turn on the left / right ramp (the code's substring test also fires on these).
LEFT_WORDS = frozenset({"left", "leftmost", "lefthand"})
RIGHT_WORDS = frozenset({"right", "rightmost", "righthand"})


# ---------------------------------------------------------------------------------------------------
# Generative score and proposal-free proposals
# ---------------------------------------------------------------------------------------------------


def generative_scores(attention: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``N`` float32: mean attention inside each mask minus mean outside it (computed in float64 for a
    float64 map, as the code's numpy sums).

    Args:
        attention: ``H x W`` float map.
        masks: ``N x H x W`` bool.
    """
    if attention.ndim != 2 or masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(attention.shape):
        raise BadInputError(
            f"attention H x W and masks N x H x W must agree, got {tuple(attention.shape)} and {tuple(masks.shape)}"
        )
    dtype = torch.float64 if attention.dtype == torch.float64 else torch.float32
    a = attention.to(dtype).flatten()
    m = masks.flatten(1).to(dtype)
    outside = 1.0 - m
    return ((m @ a) / (m.sum(dim=1) + eps) - (outside @ a) / (outside.sum(dim=1) + eps)).float()


def attention_proposals(
    attention: torch.Tensor, thresholds: Sequence[float], mode: str = "value"
) -> tuple[Proposals, list[float]]:
    """Masks ``attention >= level`` per threshold, empty and repeated masks dropped, and the kept thresholds.

    Args:
        attention: ``H x W`` float map (normalised to [0, 1] by the caller for ``mode="value"``).
        thresholds: fractions in [0, 1].
        mode: ``"value"``: level = min + t (max - min); ``"quantile"``: level = the t-quantile of the values.
    """
    if mode not in THRESHOLD_MODES:
        raise ConfigError(f"threshold mode must be one of {list(THRESHOLD_MODES)}, got {mode!r}")
    a = attention.float()
    low, high = float(a.min()), float(a.max())
    masks, kept, seen = [], [], set()
    for t in thresholds:
        if mode == "value":
            level = low + float(t) * (high - low)
        else:
            level = float(torch.quantile(a.flatten(), float(t)))
        mask = a >= level
        if not bool(mask.any()) or (high - low) <= 0:
            continue
        signature = mask.numpy().tobytes()
        if signature in seen:
            continue
        seen.add(signature)
        masks.append(mask)
        kept.append(float(t))
    if not masks:
        return Proposals.empty((int(a.shape[0]), int(a.shape[1]))), []
    return Proposals.from_masks(torch.stack(masks)), kept


def kept_for_scoring(
    proposals: Proposals,
    *,
    max_proposals: int | None,
    min_area: int,
    min_area_ratio: float = 0.0,
    ties: str = "first",
) -> np.ndarray:
    """``N`` bool: the code's ``filter_proposal``: among the ``max_proposals`` largest, ``area > min_area``
    and ``area > min_area_ratio * H * W``.

    Args:
        proposals: ``N`` masks of one ``H x W`` image.
        max_proposals: k of the top-k by area (``None``: no cap).
        min_area: areas at or below are dropped (px).
        min_area_ratio: areas at or below this share of the image are dropped (the code's
            ``filter_size_ratio``, 0 in every published config).
        ties: which of equal areas at the k-th place stay: ``"first"`` (earlier masks, ours) or
            ``"argpartition"`` (the code's ``np.argpartition(-areas, k - 1)[:k]``, whose choice among ties
            is numpy's introselect order).
    """
    if ties not in TOPK_TIES:
        raise ConfigError(f"ties must be one of {list(TOPK_TIES)}, got {ties!r}")
    n = len(proposals)
    keep = np.ones(n, dtype=bool)
    areas = np.asarray(proposals.area)
    if max_proposals is not None and n > max_proposals:
        keep[:] = False
        if ties == "argpartition":
            keep[np.argpartition(-areas, max_proposals - 1)[:max_proposals]] = True
        else:
            order = np.lexsort((np.arange(n), -areas))
            keep[order[:max_proposals]] = True
    if min_area > 0:
        keep &= areas > min_area
    if min_area_ratio > 0 and n:
        height, width = proposals.image_size
        keep &= areas > height * width * min_area_ratio
    return keep


# ---------------------------------------------------------------------------------------------------
# Positional ramp
# ---------------------------------------------------------------------------------------------------


def ramp_direction(tokens: Sequence[str], text: str, *, peer_compat: bool = False) -> str | None:
    """``"left"``, ``"right"`` or ``None``; left wins when both are named (as in the code).

    Args:
        tokens: the expression's lower-cased word tokens (whole-word test).
        text: the expression as typed (``peer_compat``: the code's case-sensitive substring test).
    """
    if peer_compat:
        if "left" in text:
            return "left"
        if "right" in text:
            return "right"
        return None
    words = {t.lower() for t in tokens}
    if words & LEFT_WORDS:
        return "left"
    if words & RIGHT_WORDS:
        return "right"
    return None


def positional_ramp(rgb: np.ndarray, direction: str | None, precision: str = "float32") -> np.ndarray:
    """``H x W x 3`` float (0-255 scale): the image times the code's horizontal ramp (module docstring).

    ``precision``: ``"float32"`` (ours) or ``"float64"`` (the code: ``np.linspace`` in float64 times the
    uint8 image). The hard crops are cast to uint8 after this product, so the two can differ by one grey
    level where a product sits within float32 rounding of an integer.
    """
    if precision not in RAMP_PRECISIONS:
        raise ConfigError(f"ramp precision must be one of {list(RAMP_PRECISIONS)}, got {precision!r}")
    dtype = np.float64 if precision == "float64" else np.float32
    image = rgb.astype(dtype)
    if direction is None:
        return image
    width = image.shape[1]
    span = width * 2 // 3
    if direction == "left":
        weights = np.concatenate([np.linspace(1.0, 0.0, span), np.zeros(width - span)])
    elif direction == "right":
        weights = np.concatenate([np.zeros(width - span), np.linspace(0.0, 1.0, span)])
    else:
        raise ConfigError(f"ramp direction must be 'left', 'right' or None, got {direction!r}")
    return image * weights.astype(dtype)[None, :, None]


# ---------------------------------------------------------------------------------------------------
# CLIP region features
# ---------------------------------------------------------------------------------------------------


class RegionClipEncoder:
    """Hard and soft mask features of an open_clip ViT (see the module docstring).

    Args:
        model: an open_clip ``CLIP`` whose ``visual`` is a ``VisionTransformer`` with a class token.
        model_name: store name (meter).
        mean, std: the model's normalisation (CLIP's by default, as the code).
        meter: counts ``"<model_name>:image"`` forwards.
        max_masks_per_forward: class tokens (soft) or crops (hard) per forward.
        position_interpolation: ``"exact"`` or ``"scale_factor"`` (the code's), see
            ``workers.engine.blocks.clip.tower.ClipTower``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        model_name: str,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        meter: Meter | None = None,
        max_masks_per_forward: int = 32,
        position_interpolation: str = "exact",
    ) -> None:
        self.tower = ClipTower(
            model.visual, model_name=model_name, position_interpolation=position_interpolation
        )
        self.model_name = model_name
        self._meter = meter
        self.mean = torch.tensor([float(v) for v in mean]).view(3, 1, 1)
        self.std = torch.tensor([float(v) for v in std]).view(3, 1, 1)
        self.max_masks_per_forward = max(1, int(max_masks_per_forward))
        self.patch = self.tower.patch
        self.input_size = self.tower.input_size[0]
        self.grid = self.tower.grid

    @property
    def meter(self) -> Meter:
        """The meter given at construction, else the active one (a wrapper kept by the hub has none)."""
        return self._meter if self._meter is not None else current_meter()

    @property
    def device(self) -> torch.device:
        return self.tower.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tower.dtype

    def _normalise(self, image: np.ndarray) -> torch.Tensor:
        """``H x W x 3`` (0-255) -> ``3 x H x W`` normalised float32."""
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (tensor - self.mean) / self.std

    def _head(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.tower.head(tokens).float(), dim=-1).cpu()

    def _cls_forward(self, images: torch.Tensor) -> torch.Tensor:
        with self.meter.model_call(f"{self.model_name}:image"):
            return self._head(self.tower.blocks(self.tower.embed(images))[:, 0])

    # -- hard ---------------------------------------------------------------------------------------
    def hard_crops(
        self, image: np.ndarray, masks: np.ndarray, mode: str = "shorter_side"
    ) -> list[np.ndarray]:
        """Per mask, the box crop of ``image`` (``H x W x 3``, 0-255) with black outside the mask, resized.

        ``"shorter_side"``: shorter side to the input size, aspect kept; ``"square"``: padded square with
        black, then the input size. Crops are uint8 ``h x w x 3`` (the code casts before resizing).
        """
        if mode not in HARD_CROP_CHOICES:
            raise ConfigError(f"hard_crop must be one of {list(HARD_CROP_CHOICES)}, got {mode!r}")
        crops = []
        size = self.input_size
        for mask in masks:
            if not mask.any():
                crops.append(np.zeros((size, size, 3), dtype=np.uint8))
                continue
            x0, y0, x1, y1 = tight_box_xyxy(mask)
            crop = (image[y0:y1, x0:x1] * mask[y0:y1, x0:x1, None]).astype(np.uint8)
            h, w = crop.shape[:2]
            if mode == "square":
                square, _ = pad_square(crop)
                resized = Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR)
            else:
                if h <= w:
                    new_h, new_w = size, int(size * w / h)
                else:
                    new_h, new_w = int(size * h / w), size
                resized = Image.fromarray(crop).resize(
                    (max(new_w, 1), max(new_h, 1)), Image.Resampling.BILINEAR
                )
            crops.append(np.asarray(resized))
        return crops

    @torch.inference_mode()
    def hard_features(self, image: np.ndarray, masks: np.ndarray, mode: str = "shorter_side") -> torch.Tensor:
        """``N x D`` L2-normalised CLS features of the hard crops; crops of one size share a forward.

        Args:
            image: ``H x W x 3`` float or uint8 on the 0-255 scale (after the positional ramp).
            masks: ``N x H x W`` bool.
        """
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
            raise BadInputError(
                f"masks must be N x H x W for an image of {image.shape[:2]}, got {masks.shape}"
            )
        n = masks.shape[0]
        if n == 0:
            return torch.zeros((0, self.output_dim))
        crops = self.hard_crops(image, masks, mode)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, crop in enumerate(crops):
            groups.setdefault(crop.shape[:2], []).append(index)
        out = torch.zeros((n, self.output_dim))
        for indices in groups.values():
            for first in range(0, len(indices), self.max_masks_per_forward):
                chunk = indices[first : first + self.max_masks_per_forward]
                batch = torch.stack([self._normalise(crops[i]) for i in chunk])
                out[chunk] = self._cls_forward(batch)
        return out

    # -- soft ---------------------------------------------------------------------------------------
    def soft_attention_mask(self, patch_masks: torch.Tensor) -> torch.Tensor:
        """Additive ``(K + P) x (K + P)`` mask for K class tokens followed by P patches (0 allowed, -inf not).

        Args:
            patch_masks: ``K x P`` bool, which patches each class token may attend to.
        """
        k, p = patch_masks.shape
        allowed = torch.zeros((k + p, k + p), dtype=torch.bool)
        allowed[:k, :k] = torch.eye(k, dtype=torch.bool)
        allowed[:k, k:] = patch_masks
        allowed[k:, k:] = True
        blocked = torch.zeros(allowed.shape, dtype=torch.float32)
        blocked[~allowed] = float("-inf")
        return blocked

    @torch.inference_mode()
    def soft_features(self, rgb: np.ndarray, masks: np.ndarray, max_side: int | None = None) -> torch.Tensor:
        """``N x D`` L2-normalised features of one extra class token per mask (module docstring).

        Args:
            rgb: ``H x W x 3`` uint8.
            masks: ``N x H x W`` bool.
            max_side: when set, the image is first resized so its longer side is at most this.
        """
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3 or masks.shape[1:] != rgb.shape[:2]:
            raise BadInputError(f"masks must be N x H x W for an image of {rgb.shape[:2]}, got {masks.shape}")
        n = masks.shape[0]
        if n == 0:
            return torch.zeros((0, self.output_dim))
        image = rgb
        height, width = rgb.shape[:2]
        if max_side is not None and max(height, width) > max_side:
            scale = max_side / max(height, width)
            size = (max(self.patch, round(width * scale)), max(self.patch, round(height * scale)))
            image = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC))
        if min(image.shape[:2]) < self.patch:
            raise BadInputError(
                f"an image of {image.shape[:2]} is smaller than one {self.patch} px CLIP patch"
            )
        patches, cls, grid = self.tower.patch_tokens(self._normalise(image)[None])
        on_grid = F.interpolate(torch.from_numpy(masks).float()[:, None], size=grid, mode="nearest")[:, 0]
        patch_masks = on_grid.flatten(1) > 0.5
        out = []
        for first in range(0, n, self.max_masks_per_forward):
            chunk = patch_masks[first : first + self.max_masks_per_forward]
            k = chunk.shape[0]
            x = torch.cat([cls.expand(1, k, -1), patches], dim=1)
            attn_mask = self.soft_attention_mask(chunk).to(self.device, x.dtype)
            with self.meter.model_call(f"{self.model_name}:image"):
                tokens = self.tower.blocks(self.tower.pre(x), attn_mask=attn_mask)
                out.append(self._head(tokens[0, :k]))
        return torch.cat(out)

    @property
    def output_dim(self) -> int:
        return self.tower.output_dim


# ---------------------------------------------------------------------------------------------------
# Text and fusion
# ---------------------------------------------------------------------------------------------------


def text_mix(
    sentence: torch.Tensor, subject: torch.Tensor, w_sentence: float, w_subject: float
) -> torch.Tensor:
    """``w_sentence * t + w_subject * c`` of unit-normalised ``E x D`` sentence and subject features."""
    return w_sentence * F.normalize(sentence.float(), dim=-1) + w_subject * F.normalize(
        subject.float(), dim=-1
    )


def fuse_scores(
    generative: torch.Tensor,
    hard: torch.Tensor | None,
    soft: torch.Tensor | None,
    *,
    fusion: str = "code",
    hard_weight: float = 0.7,
    soft_weight: float = 0.3,
    generative_weight: float = 0.05,
    alpha: float = 0.1,
) -> torch.Tensor:
    """Final ``N`` scores; with no discriminative part (``hard`` and ``soft`` None), ``s^G`` alone."""
    if hard is None or soft is None:
        return generative.float()
    if fusion == "code":
        return hard_weight * hard + soft_weight * soft + generative_weight * generative
    if fusion == "paper":
        total = hard_weight + soft_weight
        if total <= 0 or not math.isfinite(total):
            raise ConfigError("hard_weight + soft_weight must be positive for the paper's fusion")
        discriminative = (hard_weight * hard + soft_weight * soft) / total
        return alpha * generative + (1.0 - alpha) * discriminative
    raise ConfigError(f"fusion must be one of {list(FUSION_CHOICES)}, got {fusion!r}")


def describe_encoder(encoder: RegionClipEncoder) -> dict[str, Any]:
    """What region features depend on besides the weights and the masks (cache keys)."""
    return {
        "model": encoder.model_name,
        "mean": encoder.mean.flatten().tolist(),
        "std": encoder.std.flatten().tolist(),
        "input_size": encoder.input_size,
        "position_interpolation": encoder.tower.position_interpolation,
    }
