"""Binary masks as COCO RLE, and ``Proposals``: a batch of masks with their boxes and scores.

Conventions (shared with ``workers.engine.core.types``):

- A mask batch in memory is ``N x H x W`` bool (a ``torch.Tensor`` or a NumPy array).
- At rest and on the wire a mask is COCO RLE ``{"size": [H, W], "counts": str}`` (pycocotools'
  compressed format with ``counts`` decoded to ``str``, so it is JSON-ready).
- Boxes are ``xyxy`` in pixels with exclusive ends: ``(x0, y0, x1, y1)``, ``x1 = x0 + width``.
  An empty mask has the box ``(0, 0, 0, 0)``.

Overlaps are computed on the RLEs themselves (pycocotools), never on decoded ``N x H x W`` stacks,
so comparing a hundred full-resolution masks costs kilobytes, not gigabytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from workers.engine.core.errors import BadInputError

RLE = dict[str, Any]

__all__ = [
    "RLE",
    "Proposals",
    "bbox_xyxy_from_masks",
    "decode_rle",
    "decode_rle_one",
    "encode_rle",
    "encode_rle_one",
    "intersection_matrix",
    "mask_iou",
    "normalize_rle",
    "rle_area",
    "rle_bbox_xyxy",
]


def _as_bool_numpy(masks: np.ndarray | torch.Tensor, *, ndim: int) -> np.ndarray:
    array = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if array.ndim != ndim:
        shape = "N x H x W" if ndim == 3 else "H x W"
        raise BadInputError(f"expected a {shape} mask array, got shape {tuple(array.shape)}")
    return array.astype(bool, copy=False)


def normalize_rle(rle: RLE) -> RLE:
    """Return ``rle`` with ``counts`` as ``str`` and ``size`` as ``[H, W]`` ints; checks its shape.

    Accepts compressed RLE with ``counts`` as ``str`` or ``bytes`` (as pycocotools gives it) and
    uncompressed RLE with ``counts`` as a list of run lengths.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise BadInputError("an RLE mask must be a dict with 'size' [H, W] and 'counts'")
    size = rle["size"]
    if not isinstance(size, list | tuple) or len(size) != 2 or not all(int(s) >= 0 for s in size):
        raise BadInputError(f"an RLE mask's 'size' must be [height, width], got {size!r}")
    height, width = int(size[0]), int(size[1])
    counts = rle["counts"]
    if isinstance(counts, list):
        if sum(int(c) for c in counts) != height * width:
            raise BadInputError(
                f"an uncompressed RLE's run lengths sum to {sum(counts)}, not {height}x{width}={height * width}"
            )
        counts = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if not isinstance(counts, str):
        raise BadInputError(f"an RLE mask's 'counts' must be a string, got {type(counts).__name__}")
    return {"size": [height, width], "counts": counts}


def _to_coco(rles: Sequence[RLE]) -> list[dict]:
    """pycocotools wants ``counts`` as bytes."""
    out = []
    for rle in rles:
        norm = normalize_rle(rle)
        out.append({"size": norm["size"], "counts": norm["counts"].encode("ascii")})
    return out


def encode_rle(masks: np.ndarray | torch.Tensor) -> list[RLE]:
    """Encode an ``N x H x W`` bool batch as a list of N COCO RLEs (``counts`` as ``str``)."""
    array = _as_bool_numpy(masks, ndim=3)
    if array.shape[0] == 0:
        return []
    fortran = np.asfortranarray(array.transpose(1, 2, 0).astype(np.uint8))
    encoded = mask_utils.encode(fortran)
    return [
        {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}
        for r in encoded
    ]


def encode_rle_one(mask: np.ndarray | torch.Tensor) -> RLE:
    """Encode one ``H x W`` bool mask as COCO RLE."""
    array = _as_bool_numpy(mask, ndim=2)
    return encode_rle(array[None])[0]


def decode_rle(rles: Sequence[RLE], size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode N RLEs into an ``N x H x W`` bool array.

    ``size`` (``(H, W)``) is needed only when ``rles`` is empty; otherwise all RLEs must share one size.
    """
    if len(rles) == 0:
        if size is None:
            raise BadInputError("decode_rle needs size=(H, W) to decode an empty list of masks")
        return np.zeros((0, int(size[0]), int(size[1])), dtype=bool)
    coco = _to_coco(rles)
    sizes = {tuple(r["size"]) for r in coco}
    if len(sizes) != 1:
        raise BadInputError(f"masks of one batch must share one size, got {sorted(sizes)}")
    decoded = mask_utils.decode(coco)  # H x W x N uint8
    return np.ascontiguousarray(decoded.transpose(2, 0, 1).astype(bool))


def decode_rle_one(rle: RLE) -> np.ndarray:
    """Decode one RLE into an ``H x W`` bool array."""
    return decode_rle([rle])[0]


def rle_area(rles: Sequence[RLE]) -> np.ndarray:
    """Foreground pixel counts, shape ``N`` int64.

    Counted in chunks of at most 255 masks: pycocotools 2.0.11's ``area`` overflows (``OverflowError``) on a
    list of 256 or more.
    """
    if len(rles) == 0:
        return np.zeros((0,), dtype=np.int64)
    coco = _to_coco(rles)
    parts = [np.asarray(mask_utils.area(coco[i : i + 255]), dtype=np.int64) for i in range(0, len(coco), 255)]
    return np.concatenate(parts).reshape(-1)


def rle_bbox_xyxy(rles: Sequence[RLE]) -> np.ndarray:
    """Tight boxes, ``N x 4`` float64 ``xyxy`` with exclusive ends; ``(0, 0, 0, 0)`` for an empty mask."""
    if len(rles) == 0:
        return np.zeros((0, 4), dtype=np.float64)
    xywh = np.asarray(mask_utils.toBbox(_to_coco(rles)), dtype=np.float64).reshape(-1, 4)
    xyxy = xywh.copy()
    xyxy[:, 2] = xywh[:, 0] + xywh[:, 2]
    xyxy[:, 3] = xywh[:, 1] + xywh[:, 3]
    return xyxy


def bbox_xyxy_from_masks(masks: np.ndarray | torch.Tensor) -> np.ndarray:
    """Tight boxes of an ``N x H x W`` bool batch, ``N x 4`` float64 ``xyxy`` (exclusive ends)."""
    array = _as_bool_numpy(masks, ndim=3)
    boxes = np.zeros((array.shape[0], 4), dtype=np.float64)
    rows = array.any(axis=2)  # N x H
    cols = array.any(axis=1)  # N x W
    for i in range(array.shape[0]):
        ys = np.flatnonzero(rows[i])
        xs = np.flatnonzero(cols[i])
        if ys.size and xs.size:
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def mask_iou(rles_a: Sequence[RLE], rles_b: Sequence[RLE]) -> np.ndarray:
    """Intersection over union of every pair, ``N x M`` float64 (0 where the union is empty)."""
    if len(rles_a) == 0 or len(rles_b) == 0:
        return np.zeros((len(rles_a), len(rles_b)), dtype=np.float64)
    iou = mask_utils.iou(_to_coco(rles_a), _to_coco(rles_b), [0] * len(rles_b))
    return np.asarray(iou, dtype=np.float64).reshape(len(rles_a), len(rles_b))


def intersection_matrix(rles_a: Sequence[RLE], rles_b: Sequence[RLE]) -> np.ndarray:
    """Pixel counts of every pairwise intersection, ``N x M`` int64.

    Uses pycocotools' crowd IoU (``|a & b| / |a|``) times ``|a|``, rounded: exact for any image size.
    """
    if len(rles_a) == 0 or len(rles_b) == 0:
        return np.zeros((len(rles_a), len(rles_b)), dtype=np.int64)
    coco_a, coco_b = _to_coco(rles_a), _to_coco(rles_b)
    crowd = np.asarray(mask_utils.iou(coco_a, coco_b, [1] * len(coco_b)), dtype=np.float64)
    crowd = crowd.reshape(len(coco_a), len(coco_b))
    area_a = np.asarray(mask_utils.area(coco_a), dtype=np.float64).reshape(-1, 1)
    return np.rint(crowd * area_a).astype(np.int64)


def _column(values: Any, n: int, name: str, dtype: type) -> np.ndarray:
    if values is None:
        return np.full((n,), np.nan, dtype=dtype)
    array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=dtype)
    array = array.reshape(-1)
    if array.shape[0] != n:
        raise BadInputError(f"Proposals.{name} has {array.shape[0]} values for {n} masks")
    return array


@dataclass
class Proposals:
    """N candidate masks of one ``H x W`` image, RLE at rest.

    Attributes:
        rles: N COCO RLEs (``counts`` as ``str``), all of size ``image_size``.
        image_size: ``(H, W)`` of the image the masks belong to.
        bbox_xyxy: ``N x 4`` float64, ``xyxy`` pixels with exclusive ends.
        area: ``N`` int64 foreground pixel counts.
        predicted_iou: ``N`` float64, SAM's predicted mask quality (NaN where the source gives none).
        stability_score: ``N`` float64, SAM's stability score (NaN where the source gives none).

    Build one with ``Proposals.from_masks`` or ``Proposals.from_rles``; the boxes and areas are then
    derived from the masks, so they can never disagree with them.
    """

    rles: list[RLE]
    image_size: tuple[int, int]
    bbox_xyxy: np.ndarray = field(repr=False)
    area: np.ndarray = field(repr=False)
    predicted_iou: np.ndarray = field(repr=False)
    stability_score: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        n = len(self.rles)
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.bbox_xyxy = np.asarray(self.bbox_xyxy, dtype=np.float64).reshape(n, 4)
        self.area = _column(self.area, n, "area", np.int64)
        self.predicted_iou = _column(self.predicted_iou, n, "predicted_iou", np.float64)
        self.stability_score = _column(self.stability_score, n, "stability_score", np.float64)
        for rle in self.rles:
            if tuple(rle["size"]) != self.image_size:
                raise BadInputError(
                    f"a proposal mask of size {rle['size']} in a batch for image {self.image_size}"
                )

    # construction -------------------------------------------------------------------------------
    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> Proposals:
        """No masks for an image of ``(H, W)``."""
        return cls.from_rles([], image_size)

    @classmethod
    def from_rles(
        cls,
        rles: Sequence[RLE],
        image_size: tuple[int, int],
        *,
        predicted_iou: Any = None,
        stability_score: Any = None,
    ) -> Proposals:
        """Build from RLEs; boxes and areas are computed from them."""
        norm = [normalize_rle(r) for r in rles]
        return cls(
            rles=norm,
            image_size=(int(image_size[0]), int(image_size[1])),
            bbox_xyxy=rle_bbox_xyxy(norm),
            area=rle_area(norm),
            predicted_iou=predicted_iou,
            stability_score=stability_score,
        )

    @classmethod
    def from_masks(
        cls,
        masks: np.ndarray | torch.Tensor,
        *,
        predicted_iou: Any = None,
        stability_score: Any = None,
    ) -> Proposals:
        """Build from an ``N x H x W`` bool batch."""
        array = _as_bool_numpy(masks, ndim=3)
        return cls.from_rles(
            encode_rle(array),
            (array.shape[1], array.shape[2]),
            predicted_iou=predicted_iou,
            stability_score=stability_score,
        )

    @classmethod
    def cat(cls, parts: Sequence[Proposals]) -> Proposals:
        """Concatenate batches of the same image size, keeping their order."""
        if not parts:
            raise BadInputError("Proposals.cat needs at least one batch")
        sizes = {p.image_size for p in parts}
        if len(sizes) != 1:
            raise BadInputError(f"Proposals.cat got batches of different image sizes {sorted(sizes)}")
        return cls(
            rles=[r for p in parts for r in p.rles],
            image_size=parts[0].image_size,
            bbox_xyxy=np.concatenate([p.bbox_xyxy for p in parts]),
            area=np.concatenate([p.area for p in parts]),
            predicted_iou=np.concatenate([p.predicted_iou for p in parts]),
            stability_score=np.concatenate([p.stability_score for p in parts]),
        )

    # access ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rles)

    def filter(self, keep: np.ndarray | torch.Tensor | Sequence[int] | Sequence[bool]) -> Proposals:
        """A new batch with the masks selected by ``keep``.

        ``keep`` is either an ``N`` bool mask or a sequence of indices (whose order is kept, so it can
        also reorder, e.g. ``keep=np.argsort(-p.area)``).
        """
        index = np.asarray(keep.detach().cpu() if isinstance(keep, torch.Tensor) else keep)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise BadInputError(f"a bool keep mask must have shape ({len(self)},), got {index.shape}")
            index = np.flatnonzero(index)
        index = index.astype(np.int64).reshape(-1)
        if index.size and (index.min() < -len(self) or index.max() >= len(self)):
            raise BadInputError(f"keep index out of range for {len(self)} proposals")
        return Proposals(
            rles=[self.rles[i] for i in index],
            image_size=self.image_size,
            bbox_xyxy=self.bbox_xyxy[index],
            area=self.area[index],
            predicted_iou=self.predicted_iou[index],
            stability_score=self.stability_score[index],
        )

    def to_numpy(self) -> np.ndarray:
        """Decoded masks, ``N x H x W`` bool."""
        return decode_rle(self.rles, self.image_size)

    def to_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Decoded masks, ``N x H x W`` bool tensor on ``device``."""
        return torch.from_numpy(self.to_numpy()).to(device)

    # caching -------------------------------------------------------------------------------------
    def digest(self) -> str:
        """A 16-hex-digit hash of the masks themselves (image size and RLE counts): which set of proposals
        a per-mask cached value covers."""
        digest = hashlib.sha256(repr(self.image_size).encode())
        for rle in self.rles:
            digest.update(b"|")
            digest.update(rle["counts"].encode("ascii"))
        return digest.hexdigest()[:16]

    def to_state(self) -> dict[str, Any]:
        """A JSON-able dict (for the per-image cache); ``from_state`` reverses it exactly."""

        def floats(values: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in values]

        return {
            "image_size": list(self.image_size),
            "rles": [dict(r) for r in self.rles],
            "bbox_xyxy": self.bbox_xyxy.tolist(),
            "area": self.area.tolist(),
            "predicted_iou": floats(self.predicted_iou),
            "stability_score": floats(self.stability_score),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Proposals:
        """Inverse of ``to_state``."""

        def floats(values: list[float | None]) -> np.ndarray:
            return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)

        n = len(state["rles"])
        return cls(
            rles=[normalize_rle(r) for r in state["rles"]],
            image_size=tuple(state["image_size"]),
            bbox_xyxy=np.asarray(state["bbox_xyxy"], dtype=np.float64).reshape(n, 4),
            area=np.asarray(state["area"], dtype=np.int64),
            predicted_iou=floats(state["predicted_iou"]),
            stability_score=floats(state["stability_score"]),
        )
