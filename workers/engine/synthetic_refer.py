"""A small dataset in the exact REFER layout, with known answers, for tests and for trying the benchmark.

``write_synthetic_refcoco(out, n_images)`` writes::

    OUT/refcoco/refs(unc).p    OUT/refcoco/instances.json
    OUT/refcoco+/refs(unc).p   OUT/refcoco+/instances.json
    OUT/refcocog/refs(umd).p   OUT/refcocog/refs(google).p   OUT/refcocog/instances.json
    OUT/images/train2014/COCO_train2014_%012d.jpg

Each image is a plain background with a few flat-coloured shapes, one colour per shape, placed in separate
cells of a 3 x 2 grid, so a trivial oracle (pixels near the colour named in the sentence) finds the answer.
Shapes: rectangle, disc, triangle, a *pair* (two disjoint rectangles: a multi-part polygon) and a *cross*
(two overlapping bars: under the ground-truth convention of METHODS.md the overlap is background, under
``gt_union`` it is foreground, while the image paints it). Pixels are painted from the same pycocotools
rasterisation the reader uses (JPEG at quality 98 without chroma subsampling keeps edges crisp), so an
oracle matching colours scores IoU near 1 on every shape but the cross.

Every image carries several refs, each with two or three sentences, and the refs of one image are spread
over all splits of a refs file (unlike real RefCOCO, where splits are disjoint by image), so even a
one-image set has every split. RefCOCO+ sentences avoid location words, as the real RefCOCO+ does.

The refs files are written the way Python 2's ``cPickle`` writes them: ``str`` values as byte strings
(opcodes ``S``/``U``/``T``), protocol 2 by default; :func:`dump_python2_pickle` also writes protocol 0.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["COLOURS", "SHAPES", "SyntheticSummary", "dump_python2_pickle", "write_synthetic_refcoco"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 215, 30),
    "magenta": (210, 40, 200),
    "cyan": (40, 210, 215),
    "orange": (240, 130, 20),
}
SHAPES: dict[str, int] = {"rectangle": 1, "disc": 2, "triangle": 3, "pair": 4, "cross": 5}
_BACKGROUND = (128, 128, 128)
_SPLITS = {
    "unc": ("train", "val", "testA", "testB"),
    "umd": ("train", "val", "test"),
    "google": ("train", "val"),
}


# --------------------------------------------------------------------------------------------------------
# Python 2 style pickles


def _py2_str(text: str) -> bytes:
    return text.encode("latin1")


def _dump_p2(obj: Any, out: BytesIO) -> None:
    if obj is None:
        out.write(b"N")
    elif isinstance(obj, bool):
        out.write(b"\x88" if obj else b"\x89")
    elif isinstance(obj, int):
        if not -(2**31) <= obj < 2**31:
            raise ValueError(f"integer {obj} does not fit a Python 2 int pickle")
        out.write(b"J" + struct.pack("<i", obj))
    elif isinstance(obj, float):
        out.write(b"G" + struct.pack(">d", obj))
    elif isinstance(obj, str):
        data = _py2_str(obj)
        out.write((b"U" + bytes([len(data)])) if len(data) < 256 else (b"T" + struct.pack("<i", len(data))))
        out.write(data)
    elif isinstance(obj, list | tuple):
        out.write(b"](")
        for item in obj:
            _dump_p2(item, out)
        out.write(b"e")
    elif isinstance(obj, dict):
        out.write(b"}(")
        for key, value in obj.items():
            _dump_p2(key, out)
            _dump_p2(value, out)
        out.write(b"u")
    else:
        raise TypeError(f"cannot write {type(obj).__name__} into a Python 2 refs pickle")


def _escape_p0(data: bytes) -> bytes:
    """Python 2 ``repr`` of a byte string body: printable ASCII kept, the rest as ``\\xNN``."""
    out = bytearray()
    for byte in data:
        if byte in (ord("'"), ord("\\")) or not 32 <= byte < 127:
            out += b"\\x%02x" % byte
        else:
            out.append(byte)
    return bytes(out)


def _dump_p0(obj: Any, out: BytesIO) -> None:
    if obj is None:
        out.write(b"N")
    elif isinstance(obj, bool):
        out.write(b"I01\n" if obj else b"I00\n")
    elif isinstance(obj, int):
        out.write(b"I%d\n" % obj)
    elif isinstance(obj, float):
        out.write(b"F" + repr(obj).encode("ascii") + b"\n")
    elif isinstance(obj, str):
        out.write(b"S'" + _escape_p0(_py2_str(obj)) + b"'\n")
    elif isinstance(obj, list | tuple):
        out.write(b"(l")
        for item in obj:
            _dump_p0(item, out)
            out.write(b"a")
    elif isinstance(obj, dict):
        out.write(b"(d")
        for key, value in obj.items():
            _dump_p0(key, out)
            _dump_p0(value, out)
            out.write(b"s")
    else:
        raise TypeError(f"cannot write {type(obj).__name__} into a Python 2 refs pickle")


def dump_python2_pickle(obj: Any, protocol: int = 2) -> bytes:
    """Bytes of ``obj`` (dicts, lists, str, int, float, bool, None) pickled as Python 2 would write them.

    Strings become Python 2 byte strings (latin-1), which Python 3 reads back with ``encoding="latin1"``.
    """
    out = BytesIO()
    if protocol == 2:
        out.write(b"\x80\x02")
        _dump_p2(obj, out)
    elif protocol == 0:
        _dump_p0(obj, out)
    else:
        raise ValueError(f"protocol must be 0 or 2, got {protocol}")
    out.write(b".")
    return out.getvalue()


# --------------------------------------------------------------------------------------------------------
# Scenes


@dataclass(frozen=True)
class _Shape:
    kind: str
    colour: str
    column: int  # 0..2
    row: int  # 0..1
    polygons: list[list[float]]


@dataclass(frozen=True)
class SyntheticSummary:
    """What was written."""

    root: Path
    n_images: int
    n_annotations: int
    n_refs: dict[str, int]
    n_sentences: dict[str, int]


def _shape_polygons(
    kind: str, x0: float, y0: float, w: float, h: float, rng: np.random.Generator
) -> list[list[float]]:
    """Polygon parts (``[x, y, ...]`` lists) of one shape inside the cell box ``(x0, y0, w, h)``."""
    mx, my = 0.15 * w, 0.15 * h
    left, top, right, bottom = x0 + mx, y0 + my, x0 + w - mx, y0 + h - my
    jitter = float(rng.uniform(-0.05, 0.05)) * w
    left, right = left + jitter, right + jitter
    if kind == "rectangle":
        return [[left, top, right, top, right, bottom, left, bottom]]
    if kind == "disc":
        cx, cy, r = (left + right) / 2, (top + bottom) / 2, min(right - left, bottom - top) / 2
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        return [[float(v) for a in angles for v in (cx + r * np.cos(a), cy + r * np.sin(a))]]
    if kind == "triangle":
        return [[(left + right) / 2, top, right, bottom, left, bottom]]
    if kind == "pair":  # two disjoint parts
        mid = (left + right) / 2
        gap = 0.1 * (right - left)
        return [
            [left, top, mid - gap, top, mid - gap, bottom, left, bottom],
            [mid + gap, top, right, top, right, bottom, mid + gap, bottom],
        ]
    if kind == "cross":  # two overlapping parts
        cx, cy = (left + right) / 2, (top + bottom) / 2
        hw, hh = 0.18 * (right - left), 0.18 * (bottom - top)
        return [
            [left, cy - hh, right, cy - hh, right, cy + hh, left, cy + hh],
            [cx - hw, top, cx + hw, top, cx + hw, bottom, cx - hw, bottom],
        ]
    raise ValueError(f"unknown shape {kind!r}")


def _union_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    rles = mask_utils.frPyObjects(polygons, height, width)
    return mask_utils.decode(rles).any(axis=2)


def _where(shape: _Shape) -> str:
    column = ("left", "middle", "right")[shape.column]
    return f"{'top' if shape.row == 0 else 'bottom'} {column}"


def _sentences(shape: _Shape, dataset: str) -> list[str]:
    if dataset == "refcoco+":
        return [
            f"{shape.colour} {shape.kind}",
            f"the {shape.colour} one",
            f"{shape.kind} that is {shape.colour}",
        ]
    if dataset == "refcocog":
        return [
            f"a {shape.colour} {shape.kind} in the {_where(shape)} of the picture",
            f"the {shape.kind} coloured {shape.colour} at the {_where(shape)}",
        ]
    return [
        f"{shape.colour} {shape.kind}",
        f"{shape.colour} {shape.kind} {_where(shape)}",
        f"the {shape.colour} one",
    ]


def _sentence_record(text: str, sent_id: int) -> dict:
    return {"tokens": text.split(), "raw": text[0].upper() + text[1:] + ".", "sent_id": sent_id, "sent": text}


def _scene(rng: np.random.Generator, width: int, height: int) -> list[_Shape]:
    n = int(rng.integers(4, 6))
    cells = rng.permutation(6)[:n]
    colours = rng.permutation(list(COLOURS))[:n]
    kinds = list(SHAPES)
    kinds = kinds + list(rng.choice(kinds, size=max(0, n - len(kinds))))
    kinds = [kinds[i] for i in rng.permutation(len(kinds))[:n]]
    shapes = []
    cw, ch = width / 3, height / 2
    for cell, colour, kind in zip(cells, colours, kinds, strict=True):
        column, row = int(cell) % 3, int(cell) // 3
        # Rounded as written to instances.json, so the painted pixels are exactly what the reader rasterises.
        polygons = [
            [round(v, 2) for v in part] for part in _shape_polygons(kind, column * cw, row * ch, cw, ch, rng)
        ]
        shapes.append(_Shape(kind=kind, colour=str(colour), column=column, row=row, polygons=polygons))
    return shapes


def write_synthetic_refcoco(
    out: Path | str, n_images: int, *, seed: int = 0, width: int = 128, height: int = 96
) -> SyntheticSummary:
    """Write the synthetic REFER dataset under ``out`` (created if needed; files there are overwritten).

    Args:
        n_images: number of images (>= 1); each holds 4 or 5 shapes, each shape one annotation and one ref
            per refs file.
        seed: the random seed; the same seed writes the same files.
        width, height: image size in pixels (>= 48 x 32).
    """
    from PIL import Image

    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if width < 48 or height < 32:
        raise ValueError(f"images must be at least 48x32 pixels, got {width}x{height}")
    out = Path(out)
    image_dir = out / "images" / "train2014"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    images, annotations = [], []
    scenes: list[tuple[int, list[tuple[int, _Shape]]]] = []
    for index in range(n_images):
        image_id = 1000 + index
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        shapes = _scene(rng, width, height)
        canvas = np.empty((height, width, 3), dtype=np.uint8)
        canvas[:] = _BACKGROUND
        placed = []
        for j, shape in enumerate(shapes):
            ann_id = image_id * 10 + j
            mask = _union_mask(shape.polygons, height, width)
            canvas[mask] = COLOURS[shape.colour]
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            x0, y0, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": SHAPES[shape.kind],
                    "segmentation": shape.polygons,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [x0, y0, bw, bh],
                    "iscrowd": 0,
                }
            )
            placed.append((ann_id, shape))
        Image.fromarray(canvas).save(image_dir / file_name, format="JPEG", quality=98, subsampling=0)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        scenes.append((image_id, placed))

    instances = {
        "info": {"description": "synthetic REFER-layout dataset (workers.engine.synthetic_refer)"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "shape"} for name, cid in SHAPES.items()],
    }
    n_refs: dict[str, int] = {}
    n_sentences: dict[str, int] = {}
    for dataset, split_bys in (
        ("refcoco", ("unc",)),
        ("refcoco+", ("unc",)),
        ("refcocog", ("umd", "google")),
    ):
        folder = out / dataset
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "instances.json").write_text(json.dumps(instances))
        for split_by in split_bys:
            splits = _SPLITS[split_by]
            refs, ref_id, sent_id = [], 0, 0
            for index, (image_id, placed) in enumerate(scenes):
                for j, (ann_id, shape) in enumerate(placed):
                    sentences = []
                    for text in _sentences(shape, dataset):
                        sentences.append(_sentence_record(text, sent_id))
                        sent_id += 1
                    refs.append(
                        {
                            "sent_ids": [s["sent_id"] for s in sentences],
                            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                            "ann_id": ann_id,
                            "ref_id": ref_id,
                            "image_id": image_id,
                            "split": splits[(index + j) % len(splits)],
                            "sentences": sentences,
                            "category_id": SHAPES[shape.kind],
                        }
                    )
                    ref_id += 1
            (folder / f"refs({split_by}).p").write_bytes(dump_python2_pickle(refs, protocol=2))
            key = f"{dataset}/{split_by}"
            n_refs[key], n_sentences[key] = len(refs), sent_id
    return SyntheticSummary(
        root=out, n_images=n_images, n_annotations=len(annotations), n_refs=n_refs, n_sentences=n_sentences
    )
