"""Checks on a REFER data set before any native code sees it: segmentations, pickled strings. Torch-free.

pycocotools rasterises polygons and decodes RLE in C with no checks of its own: a NaN or a vertex at 2e8
crashes it (SIGSEGV) or makes it allocate for minutes, and a wrong RLE ``size`` decodes to a mask of the
wrong shape. Everything read from ``instances.json`` goes through :func:`clean_segmentation` first, which
either returns a segmentation pycocotools can take safely or raises :class:`SegmentationError` saying what
is wrong. The rules (docs/BENCHMARK.md#what-a-data-set-must-hold):

Polygons
    A list of parts, each ``[x0, y0, x1, y1, ...]`` in pixels. A flat list of numbers (one part written
    without its brackets) is read as one part. Every value must be a finite number; a part needs an even
    count of values and at least three points. Vertices may lie outside the image by up to one image side
    (``POLYGON_MARGIN`` sides): the rasteriser clips them to the image. Beyond that the annotation is
    rejected, not clipped: such a vertex is a unit or export error, and clipping would invent a shape.
RLE
    ``{"size": [H, W], "counts": ...}`` where ``size`` must equal the image's size in ``instances.json``.
    ``counts`` is a list of run lengths (uncompressed; non-negative integers summing to ``H * W``), a COCO
    compressed string, bytes, or the text of a Python bytes literal (``"b'...'"``, written by tools that
    called ``str()`` on bytes), which is read as the bytes it spells. A compressed string is decoded in
    Python first, so a malformed one is an error in words, never a native crash.

Python 2 pickles (:func:`decode_py2_strings`)
    A refs pickle is unpickled with ``encoding="bytes"``, so every Python 2 ``str`` arrives as bytes; each
    one is then decoded on its own: UTF-8 where it is valid UTF-8, latin-1 only where it is not. (Reading
    the whole file again as latin-1 after one failure turns "café" written as UTF-8 into "cafÃ©".)
"""

from __future__ import annotations

import ast
import math
import numbers
from collections.abc import Mapping
from typing import Any

__all__ = [
    "POLYGON_MARGIN",
    "SegmentationError",
    "clean_segmentation",
    "compressed_rle_counts",
    "decode_py2_strings",
    "py2_text",
]

#: How far outside the image (in image sides) a polygon vertex may lie before the annotation is rejected.
POLYGON_MARGIN = 1.0


class SegmentationError(ValueError):
    """A segmentation that cannot be rasterised safely or correctly (the message says why)."""


# --------------------------------------------------------------------------------------------------------
# Polygons


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _clean_part(part: Any, index: int, height: int, width: int) -> list[float]:
    label = f"polygon part {index}"
    if not isinstance(part, list | tuple):
        raise SegmentationError(f"{label} is a {type(part).__name__}, not a list of coordinates")
    bad = next((v for v in part if not _is_number(v)), None)
    if bad is not None or any(not math.isfinite(float(v)) for v in part):
        shown = bad if bad is not None else next(v for v in part if not math.isfinite(float(v)))
        raise SegmentationError(f"{label} holds {shown!r}; every coordinate must be a finite number")
    if len(part) % 2:
        raise SegmentationError(f"{label} has {len(part)} values; x and y come in pairs")
    if len(part) < 6:
        raise SegmentationError(f"{label} has {len(part) // 2} point(s); a polygon needs at least 3")
    xs, ys = [float(v) for v in part[0::2]], [float(v) for v in part[1::2]]
    mx, my = POLYGON_MARGIN * width, POLYGON_MARGIN * height
    if min(xs) < -mx or max(xs) > width + mx or min(ys) < -my or max(ys) > height + my:
        raise SegmentationError(
            f"{label} reaches x {min(xs):.6g}..{max(xs):.6g}, y {min(ys):.6g}..{max(ys):.6g}, more than one "
            f"image side outside the {width}x{height} image; rejected (not clipped)"
        )
    return [float(v) for v in part]


def _clean_polygons(segmentation: list, height: int, width: int) -> list[list[float]]:
    if not segmentation:
        raise SegmentationError("the polygon list is empty")
    if all(_is_number(v) for v in segmentation):
        segmentation = [segmentation]  # written flat: one part without its brackets
    return [_clean_part(part, i, height, width) for i, part in enumerate(segmentation)]


# --------------------------------------------------------------------------------------------------------
# RLE


def compressed_rle_counts(counts: bytes) -> list[int]:
    """Decode COCO's compressed RLE string (pycocotools ``rleFrString``) to run lengths, in Python.

    Raises:
        SegmentationError: a character outside COCO's alphabet, a truncated run, or a negative run.
    """
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise SegmentationError("the compressed counts end in the middle of a run")
            code = counts[position] - 48
            if not 0 <= code < 64:
                raise SegmentationError(
                    f"the compressed counts hold {chr(counts[position])!r} at {position}, outside COCO's alphabet"
                )
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            position += 1
            shift += 1
            if shift > 13:
                raise SegmentationError("the compressed counts hold a run too long for any image")
            if not more and code & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _counts_bytes(counts: Any) -> bytes:
    if isinstance(counts, bytes | bytearray):
        return bytes(counts)
    text = counts.strip()
    if len(text) >= 3 and text[0] in "bB" and text[1] in "'\"" and text[-1] == text[1]:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as error:
            raise SegmentationError(
                f"the counts look like a bytes literal but do not parse ({error})"
            ) from None
        if isinstance(value, bytes):
            return value
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise SegmentationError("the compressed counts hold non-ASCII characters") from None


def _clean_rle(rle: Mapping[str, Any], height: int, width: int) -> dict[str, Any]:
    size = rle.get("size")
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    ):
        raise SegmentationError(f"the RLE size is {size!r}; it must be [height, width]")
    if [int(size[0]), int(size[1])] != [height, width]:
        raise SegmentationError(
            f"the RLE is {size[1]}x{size[0]} (size [{size[0]}, {size[1]}]) but its image is "
            f"{width}x{height} (size [{height}, {width}])"
        )
    counts = rle.get("counts")
    if isinstance(counts, list | tuple):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise SegmentationError("the RLE counts must be non-negative integers")
        if sum(counts) != height * width:
            raise SegmentationError(
                f"the RLE counts cover {sum(counts):,} pixels; the image has {height * width:,}"
            )
        return {"size": [height, width], "counts": list(counts)}
    if not isinstance(counts, str | bytes | bytearray):
        raise SegmentationError(f"the RLE counts are a {type(counts).__name__}; expected a list or a string")
    data = _counts_bytes(counts)
    runs = compressed_rle_counts(data)
    if any(r < 0 for r in runs):
        raise SegmentationError("the compressed counts decode to a negative run length")
    if sum(runs) != height * width:
        raise SegmentationError(
            f"the compressed counts cover {sum(runs):,} pixels; the image has {height * width:,}"
        )
    return {"size": [height, width], "counts": data}


# --------------------------------------------------------------------------------------------------------


def clean_segmentation(segmentation: Any, height: int, width: int) -> list[list[float]] | dict[str, Any]:
    """``segmentation`` checked for an ``height x width`` image, in a form pycocotools takes safely.

    Returns polygon parts (``list[list[float]]``) or an RLE dict (``counts`` a list or bytes).

    Raises:
        SegmentationError: see the module docstring for every rule.
    """
    if height < 1 or width < 1:
        raise SegmentationError(f"its image is {width}x{height}; an image needs at least one pixel")
    if isinstance(segmentation, list):
        return _clean_polygons(segmentation, height, width)
    if isinstance(segmentation, Mapping) and "counts" in segmentation:
        return _clean_rle(segmentation, height, width)
    raise SegmentationError(
        f"the segmentation is a {type(segmentation).__name__}; expected polygons (a list) or an RLE "
        "({'size': [h, w], 'counts': ...})"
    )


# --------------------------------------------------------------------------------------------------------
# Python 2 strings


def py2_text(value: bytes) -> str:
    """One Python 2 byte string as text: UTF-8 where valid, latin-1 otherwise."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def decode_py2_strings(value: Any) -> Any:
    """``value`` (unpickled with ``encoding="bytes"``) with every ``bytes`` decoded by :func:`py2_text`.

    Dict keys, list and tuple items are walked; other values are returned as they are.
    """
    if isinstance(value, bytes):
        return py2_text(value)
    if isinstance(value, dict):
        return {decode_py2_strings(k): decode_py2_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_py2_strings(v) for v in value]
    if isinstance(value, tuple):
        return tuple(decode_py2_strings(v) for v in value)
    return value
