"""Geometry shared by the methods: boxes of masks and centred square padding.

Boxes are ``xyxy`` integer pixels with exclusive ends (``x1 = last column + 1``), clipped to the image.
Square padding centres an ``h x w`` picture on a ``s x s`` canvas (``s = max(h, w)``), the extra rows or
columns split with the smaller half before (``top = (s - h) // 2``): TAS's crops, Ref-Diff's square hard crops
and its Stable Diffusion input, and the clean CLIP crops all pad this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workers.engine.core.errors import BadInputError


def _bool_array(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim != 2:
        raise BadInputError(f"a mask must be H x W, got shape {array.shape}")
    return array


def tight_box_xyxy(mask: np.ndarray | torch.Tensor) -> tuple[int, int, int, int]:
    """Tight integer ``xyxy`` box (exclusive ends) of an ``H x W`` mask; the whole image when it is empty."""
    array = _bool_array(mask)
    rows = np.flatnonzero(array.any(axis=1))
    cols = np.flatnonzero(array.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return 0, 0, array.shape[1], array.shape[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def freesolo_box_xyxy(mask: np.ndarray | torch.Tensor) -> tuple[int, int, int, int]:
    """Global-Local CLIP's box of an ``H x W`` mask (its public code, after FreeSOLO), integer ``xyxy``.

    Per axis: the centre of mass of the occupied rows (columns) plus and minus half their number, truncated
    to integers and clipped to the image. For a mask with no pixel, the whole image.
    """
    array = _bool_array(mask)
    height, width = array.shape
    rows = np.flatnonzero(array.any(axis=1))
    cols = np.flatnonzero(array.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return 0, 0, width, height
    cy, cx = rows.mean(), cols.mean()
    y0, y1 = int(cy - rows.size / 2), int(cy + rows.size / 2)
    x0, x1 = int(cx - cols.size / 2), int(cx + cols.size / 2)
    x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    x1, y1 = min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)
    return x0, y0, x1, y1


@dataclass(frozen=True)
class SquareGeometry:
    """Where an ``height x width`` picture sits in its centred square of side ``max(height, width)``."""

    height: int
    width: int

    @property
    def side(self) -> int:
        return max(self.height, self.width)

    @property
    def top(self) -> int:
        return (self.side - self.height) // 2

    @property
    def left(self) -> int:
        return (self.side - self.width) // 2

    def place(self, canvas: Any, picture: Any, channels_first: bool) -> Any:
        """Write ``picture`` into ``canvas`` at its place and return ``canvas``."""
        rows = slice(self.top, self.top + self.height)
        cols = slice(self.left, self.left + self.width)
        if channels_first:
            canvas[:, rows, cols] = picture
        else:
            canvas[rows, cols] = picture
        return canvas


def pad_square(image: np.ndarray, fill: int | float = 0) -> tuple[np.ndarray, SquareGeometry]:
    """An ``H x W x C`` array centred on a ``S x S x C`` square of ``fill`` (``S = max(H, W)``), and where it is.

    Raises:
        BadInputError: an array that is not ``H x W x C``.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise BadInputError(f"an image must be an H x W x C array, got {getattr(image, 'shape', None)}")
    geometry = SquareGeometry(int(image.shape[0]), int(image.shape[1]))
    canvas = np.full((geometry.side, geometry.side, image.shape[2]), fill, dtype=image.dtype)
    return geometry.place(canvas, image, channels_first=False), geometry


def pad_square_chw(image: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """A ``C x H x W`` tensor centred on a ``C x S x S`` square filled with ``fill`` (``C x 1 x 1``)."""
    geometry = SquareGeometry(int(image.shape[1]), int(image.shape[2]))
    if geometry.height == geometry.width:
        return image
    canvas = fill.expand(image.shape[0], geometry.side, geometry.side).clone()
    return geometry.place(canvas, image, channels_first=True)
