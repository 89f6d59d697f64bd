"""Point and box refine in the style of ``SamPredictor``: embed an image once, answer many prompts.

``PromptRefiner(sam)`` wraps the ``SamPredictor`` of the model's own package. ``set_image(rgb)`` runs
the image encoder once; ``get_embedding()`` hands out the result as an ``ImageEmbedding`` (what the
per-image cache stores) and ``set_embedding(embedding)`` puts a cached one back, so a later click on the
same image costs only the prompt encoder and mask decoder. ``refine`` answers one prompt.

Coordinates are pixels of the original image: points ``(x, y)``, boxes ``xyxy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from workers.engine.blocks.proposals.amg import check_rgb, predictor_class
from workers.engine.core.errors import BadInputError

# Magnitude of the logits a binary mask prompt is turned into (SAM's own low-res logits are of this order).
MASK_PROMPT_LOGIT = 10.0


@dataclass(frozen=True)
class ImageEmbedding:
    """SAM's image embedding of one image, enough to answer prompts without the encoder.

    Attributes:
        features: ``1 x C x h x w`` float tensor (``C = 256, h = w = 64`` for SAM and MobileSAM).
        original_size: ``(H, W)`` of the image.
        input_size: ``(h', w')`` of the image resized so its longest side is the encoder's input size.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size()

    def to(self, device: torch.device | str) -> ImageEmbedding:
        return ImageEmbedding(self.features.to(device), self.original_size, self.input_size)

    def to_state(self) -> dict[str, Any]:
        """A tensor tree for the per-image cache (features on the CPU)."""
        return {
            "features": self.features.detach().cpu(),
            "original_size": tuple(int(s) for s in self.original_size),
            "input_size": tuple(int(s) for s in self.input_size),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ImageEmbedding:
        """The embedding :meth:`to_state` stored."""
        return cls(
            features=state["features"],
            original_size=tuple(int(s) for s in state["original_size"]),
            input_size=tuple(int(s) for s in state["input_size"]),
        )


class PromptRefiner:
    """Answers point / box / mask prompts on one image with SAM, the image embedded once.

    Attributes:
        sam: the SAM or MobileSAM model (eval, on its device).
        predictor: the package's ``SamPredictor`` wrapped here.
        encoder_calls: how many times the image encoder ran (tests use it to prove caching).
    """

    def __init__(self, sam: torch.nn.Module) -> None:
        self.sam = sam
        self.predictor = predictor_class(sam)(sam)
        self.encoder_calls = 0

    @property
    def is_image_set(self) -> bool:
        return bool(self.predictor.is_image_set)

    @torch.no_grad()
    def set_image(self, rgb: np.ndarray) -> ImageEmbedding:
        """Embed ``rgb`` (``H x W x 3`` uint8 RGB) and return the embedding."""
        self.predictor.set_image(check_rgb(rgb), image_format="RGB")
        self.encoder_calls += 1
        return self.get_embedding()

    def get_embedding(self) -> ImageEmbedding:
        """The current image's embedding (features on the model's device)."""
        if not self.is_image_set:
            raise BadInputError("no image is set: call set_image(rgb) or set_embedding(embedding) first")
        return ImageEmbedding(
            features=self.predictor.features,
            original_size=tuple(int(s) for s in self.predictor.original_size),
            input_size=tuple(int(s) for s in self.predictor.input_size),
        )

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Use a cached embedding instead of running the encoder."""
        prompt_encoder = self.predictor.model.prompt_encoder
        expected = (1, prompt_encoder.embed_dim, *prompt_encoder.image_embedding_size)
        if tuple(embedding.features.shape) != tuple(expected):
            raise BadInputError(
                f"an image embedding of shape {tuple(embedding.features.shape)} does not fit this SAM model "
                f"(it takes {tuple(expected)}); it was made by another model"
            )
        self.predictor.reset_image()
        self.predictor.features = embedding.features.to(self.predictor.device)
        self.predictor.original_size = tuple(embedding.original_size)
        self.predictor.input_size = tuple(embedding.input_size)
        self.predictor.is_image_set = True

    def mask_to_logits(self, mask: np.ndarray) -> np.ndarray:
        """Turn an ``H x W`` bool mask of the image into SAM's ``1 x 256 x 256`` low-res logit prompt
        (resized like the image, padded, downsampled to the decoder's mask-input grid)."""
        height, width = self.get_embedding().original_size
        if mask.shape != (height, width):
            raise BadInputError(f"a mask prompt must be {height} x {width} like the image, got {mask.shape}")
        input_h, input_w = self.predictor.input_size
        side = self.predictor.model.image_encoder.img_size
        low_res = 4 * self.predictor.model.prompt_encoder.image_embedding_size[0]
        tensor = torch.as_tensor(mask.astype(np.float32))[None, None]
        tensor = F.interpolate(tensor, size=(input_h, input_w), mode="bilinear", align_corners=False)
        tensor = F.pad(tensor, (0, side - input_w, 0, side - input_h))
        tensor = F.interpolate(tensor, size=(low_res, low_res), mode="bilinear", align_corners=False)
        logits = (tensor[0] - 0.5) * 2.0 * MASK_PROMPT_LOGIT
        return logits.numpy()

    @torch.no_grad()
    def refine(
        self,
        points_xy: Sequence[tuple[float, float]],
        labels: Sequence[int],
        box_xyxy: tuple[float, float, float, float] | None = None,
        mask_input: np.ndarray | None = None,
        *,
        multimask: bool | None = None,
    ) -> tuple[np.ndarray, float]:
        """One mask for one prompt: ``(H x W bool mask, SAM's predicted IoU)``.

        Args:
            points_xy: clicks ``(x, y)`` in image pixels (may be empty when a box is given).
            labels: 1 (foreground, adds) or 0 (background, removes) per point.
            box_xyxy: optional box prompt.
            mask_input: optional previous mask: an ``H x W`` bool mask of the image, or SAM's
                ``1 x 256 x 256`` low-res logits from an earlier call.
            multimask: ask SAM for three masks and keep the best; default: only for a single point with
                no box and no mask (SAM's advice for ambiguous prompts).
        """
        embedding = self.get_embedding()
        height, width = embedding.original_size
        points = np.asarray(points_xy, dtype=np.float32).reshape(-1, 2)
        point_labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if points.shape[0] != point_labels.shape[0]:
            raise BadInputError(f"{points.shape[0]} points but {point_labels.shape[0]} labels")
        if not np.isin(point_labels, (0, 1)).all():
            raise BadInputError(
                f"point labels must be 1 (add) or 0 (remove), got {sorted(set(point_labels.tolist()))}"
            )
        if points.size and (
            not np.isfinite(points).all()
            or (points[:, 0] < 0).any()
            or (points[:, 0] > width).any()
            or (points[:, 1] < 0).any()
            or (points[:, 1] > height).any()
        ):
            raise BadInputError(f"points must lie inside the {width} x {height} image, got {points.tolist()}")
        box = None
        if box_xyxy is not None:
            box = np.asarray(box_xyxy, dtype=np.float32).reshape(4)
            if not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
                raise BadInputError(f"a box must be xyxy with x1 > x0 and y1 > y0, got {box.tolist()}")
        if points.shape[0] == 0 and box is None:
            raise BadInputError("a refine prompt needs at least one point or a box")
        logits = None
        if mask_input is not None:
            mask_input = np.asarray(mask_input)
            logits = self.mask_to_logits(mask_input.astype(bool)) if mask_input.ndim == 2 else mask_input
            logits = logits.astype(np.float32).reshape(1, *logits.shape[-2:])
        if multimask is None:
            multimask = points.shape[0] == 1 and box is None and logits is None
        masks, scores, _ = self.predictor.predict(
            point_coords=points if points.size else None,
            point_labels=point_labels if points.size else None,
            box=box,
            mask_input=logits,
            multimask_output=multimask,
        )
        best = int(np.argmax(scores))
        return np.asarray(masks[best], dtype=bool), float(scores[best])
