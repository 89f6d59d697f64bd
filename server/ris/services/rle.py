"""Checks on COCO RLE masks that come from outside (reviews, engine results).

pycocotools' C decoder trusts its input: run lengths that add up to more than ``H * W`` are written
past the end of its buffer. So the compressed ``counts`` string is parsed here first, in Python, with
the same LEB128-like scheme as pycocotools' ``rleFrString`` (6 bits per character offset by 48, the
fifth bit of the last group a sign, runs after the second stored as differences), and only an RLE
whose runs are non-negative and add up to exactly ``H * W`` reaches pycocotools.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from server.ris.errors import InvalidInput

_FIRST_CHAR = 48
_LAST_CHAR = 48 + 63


def rle_counts_decode(counts: str) -> list[int]:
    """Run lengths of a compressed COCO RLE ``counts`` string; raises ``ValueError`` if malformed."""
    runs: list[int] = []
    position = 0
    length = len(counts)
    while position < length:
        value = 0
        shift = 0
        more = True
        while more:
            if position >= length:
                raise ValueError("the counts string ends in the middle of a number")
            code = ord(counts[position])
            if not _FIRST_CHAR <= code <= _LAST_CHAR:
                raise ValueError(f"character {counts[position]!r} at position {position} is not an RLE digit")
            chunk = code - _FIRST_CHAR
            value |= (chunk & 0x1F) << (5 * shift)
            more = bool(chunk & 0x20)
            position += 1
            shift += 1
            if not more and chunk & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def rle_validate(rle: Any, *, height: int, width: int, field: str = "rle") -> dict[str, Any]:
    """Check a COCO RLE for an ``height x width`` mask and return it as ``{"size": [H, W], "counts": str}``.

    Raises ``InvalidInput`` naming ``field`` and the problem: not an object, wrong size, counts not a
    string, malformed counts, or runs that do not cover the image exactly.
    """
    if not isinstance(rle, Mapping):
        raise InvalidInput(f"{field} must be an object with 'size' and 'counts' (COCO RLE).")
    size = rle.get("size")
    counts = rle.get("counts")
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        raise InvalidInput(f"{field}.size must be [height, width] as two integers; got {size!r}.")
    if list(size) != [height, width]:
        raise InvalidInput(
            f"{field}.size is {list(size)} but the image is {height}x{width} (height, width); "
            "the mask must cover the whole image."
        )
    if not isinstance(counts, str):
        raise InvalidInput(
            f"{field}.counts must be a string (compressed COCO RLE); got {type(counts).__name__}."
        )
    try:
        runs = rle_counts_decode(counts)
    except ValueError as error:
        raise InvalidInput(f"{field}.counts is malformed: {error}.") from None
    if any(run < 0 for run in runs):
        raise InvalidInput(f"{field}.counts is malformed: it contains a negative run length.")
    total = sum(runs)
    if total != height * width:
        raise InvalidInput(
            f"{field}.counts covers {total} pixels but the image has {height}x{width} = {height * width}."
        )
    normalized = {"size": [height, width], "counts": counts}
    if not 0 <= rle_area(normalized) <= height * width:  # pycocotools reads it the same way
        raise InvalidInput(f"{field} cannot be read by pycocotools.")
    return normalized


def rle_area(rle: Mapping[str, Any]) -> int:
    """Foreground pixel count of a validated RLE."""
    return int(mask_utils.area({"size": list(rle["size"]), "counts": str(rle["counts"]).encode("ascii")}))


def rle_from_mask(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of an ``H x W`` bool mask with ``counts`` as ``str`` (used by tests and fixtures)."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}
