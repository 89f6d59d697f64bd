"""Plain data that crosses the engine's boundary: images in, ranked candidates out.

Masks leave the engine as COCO RLE (``{"size": [H, W], "counts": str}``, pycocotools' format with
``counts`` decoded to ``str`` so it is JSON-ready). Boxes are ``xyxy`` in pixels of the original
image: ``(x0, y0, x1, y1)`` with ``x1``/``y1`` exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ImageInput:
    """A decoded image handed to the engine.

    Attributes:
        rgb: ``H x W x 3`` uint8 array, RGB order, EXIF orientation already applied.
        sha256: hex digest of the stored file's bytes; the key of every per-image cache entry.
    """

    rgb: np.ndarray
    sha256: str

    def __post_init__(self) -> None:
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8:
            raise ValueError(f"ImageInput.rgb must be HxWx3 uint8, got {self.rgb.shape} {self.rgb.dtype}")
        if len(self.sha256) != 64:
            raise ValueError("ImageInput.sha256 must be a 64-character hex digest")

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


@dataclass(frozen=True)
class Candidate:
    """One ranked mask for one expression.

    Attributes:
        rank: 0 for the best candidate.
        rle: COCO RLE of the ``H x W`` mask, ``counts`` as ``str``.
        bbox_xyxy: tight box of the mask, ``(x0, y0, x1, y1)`` pixels, exclusive ends.
        area: foreground pixel count.
        score: the pipeline's final score (higher is better).
        components: named parts of the score (e.g. ``s_van``, ``s_att``, ``p``, ``n``, ``s_g``).
    """

    rank: int
    rle: dict
    bbox_xyxy: tuple[float, float, float, float]
    area: int
    score: float
    components: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "rank": self.rank,
            "rle": self.rle,
            "bbox_xyxy": list(self.bbox_xyxy),
            "area": self.area,
            "score": self.score,
            "components": dict(self.components),
        }
