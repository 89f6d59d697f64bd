"""A small dataset in the exact REFER layout, with known answers, for tests and for trying the benchmark.

``write_synthetic_refcoco(out, n_images)`` writes::

    OUT/refcoco/refs(unc).p    OUT/refcoco/instances.json
    OUT/refcoco+/refs(unc).p   OUT/refcoco+/instances.json
    OUT/refcocog/refs(umd).p   OUT/refcocog/refs(google).p   OUT/refcocog/instances.json
    OUT/images/train2014/COCO_train2014_%012d.jpg

Each image is a plain background with a few flat-coloured shapes, one colour per shape, placed in separate
cells of a 3 x 2 grid, so a trivial oracle (pixels near the colour named in the sentence) finds the answer.
Shapes: rectangle, disc, triangle, a *pair* (two disjoint rectangles: a multi-part polygon) and a *cross*
(two overlapping bars: under the ground-truth convention (docs/METHODS.md#ground-truth) the overlap is background, under
``gt_union`` it is foreground, while the image paints it). Pixels are painted from the same pycocotools
rasterisation the reader uses (JPEG at quality 98 without chroma subsampling keeps edges crisp), so an
oracle matching colours scores IoU near 1 on every shape but the cross.

Every image carries several refs, each with two or three sentences, and the refs of one image are spread
over all splits of a refs file (unlike real RefCOCO, where splits are disjoint by image), so even a
one-image set has every split. RefCOCO+ sentences avoid location words, as the real RefCOCO+ does.

``refcoco_shaped=True`` writes a split shaped like RefCOCO's for cost measurements (docs/PERFORMANCE.md):
COCO-size images (640 x 480 unless given), 2 or 3 refs per image (about 2.5) of 2 to 4 sentences each
(about 7 per image), and all refs of an image in one split, as in the real RefCOCO (images are dealt to the
splits in turn, so use at least as many images as the refs file has splits).

The refs files are written the way Python 2's ``cPickle`` writes them (``str`` values as byte strings,
protocol 2), through the shared REFER writer ``workers.engine.data.refer_format``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from workers.engine.data.refer_format import DATASET_SPLITS, IMAGE_FOLDER, refer_files, sentence_record

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


def _sentences(shape: _Shape, dataset: str, n: int | None = None) -> list[str]:
    """The sentences of ``shape``'s ref; ``n`` (2 to 4) picks that many for the RefCOCO-shaped set."""
    texts = _templates(shape, dataset)
    if n is None:
        return texts
    extra = f"the {shape.kind} in the {_where(shape)}" if dataset != "refcoco+" else f"{shape.colour} thing"
    return (texts + [extra])[:n]


def _templates(shape: _Shape, dataset: str) -> list[str]:
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
    out: Path | str,
    n_images: int,
    *,
    seed: int = 0,
    width: int | None = None,
    height: int | None = None,
    refcoco_shaped: bool = False,
) -> SyntheticSummary:
    """Write the synthetic REFER dataset under ``out`` (created if needed; files there are overwritten).

    Args:
        n_images: number of images (>= 1); each holds 4 or 5 shapes, each shape one annotation and (unless
            ``refcoco_shaped``) one ref per refs file.
        seed: the random seed; the same seed writes the same files.
        width, height: image size in pixels (>= 48 x 32; default 128 x 96, or 640 x 480 when
            ``refcoco_shaped``).
        refcoco_shaped: 2 or 3 refs of 2 to 4 sentences per image, all of an image's refs in one split
            (see the module docstring).

    Raises:
        ValueError: fewer than one image, or an image smaller than 48 x 32.
    """
    width = width if width is not None else (640 if refcoco_shaped else 128)
    height = height if height is not None else (480 if refcoco_shaped else 96)
    from PIL import Image

    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if width < 48 or height < 32:
        raise ValueError(f"images must be at least 48x32 pixels, got {width}x{height}")
    out = Path(out)
    image_dir = out / IMAGE_FOLDER
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
        "info": {"description": "synthetic REFER-layout dataset (workers.engine.data.synthetic)"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "shape"} for name, cid in SHAPES.items()],
    }
    n_refs: dict[str, int] = {}
    n_sentences: dict[str, int] = {}
    # The RefCOCO shape draws from its own stream, so the default set stays byte-identical.
    shape_rng = np.random.default_rng([seed, 1])
    ref_plan = [
        [
            (j, int(shape_rng.integers(2, 5)))
            for j in sorted(shape_rng.permutation(len(placed))[: int(shape_rng.integers(2, 4))])
        ]
        for _, placed in scenes
    ]
    for dataset, split_bys in (
        ("refcoco", ("unc",)),
        ("refcoco+", ("unc",)),
        ("refcocog", ("umd", "google")),
    ):
        for split_by in split_bys:
            splits = DATASET_SPLITS[dataset][split_by]
            refs, ref_id, sent_id = [], 0, 0
            for index, (image_id, placed) in enumerate(scenes):
                plan = ref_plan[index] if refcoco_shaped else [(j, None) for j in range(len(placed))]
                for j, n_sent in plan:
                    ann_id, shape = placed[j]
                    split = (
                        splits[index % len(splits)] if refcoco_shaped else splits[(index + j) % len(splits)]
                    )
                    sentences = []
                    for text in _sentences(shape, dataset, n_sent):
                        sentences.append(sentence_record(text[0].upper() + text[1:] + ".", sent_id))
                        sent_id += 1
                    refs.append(
                        {
                            "sent_ids": [s["sent_id"] for s in sentences],
                            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                            "ann_id": ann_id,
                            "ref_id": ref_id,
                            "image_id": image_id,
                            "split": split,
                            "sentences": sentences,
                            "category_id": SHAPES[shape.kind],
                        }
                    )
                    ref_id += 1
            for relpath, data in refer_files(dataset, split_by, refs, instances, python2_pickle=True).items():
                (out / relpath).parent.mkdir(parents=True, exist_ok=True)
                (out / relpath).write_bytes(data)
            key = f"{dataset}/{split_by}"
            n_refs[key], n_sentences[key] = len(refs), sent_id
    return SyntheticSummary(
        root=out, n_images=n_images, n_annotations=len(annotations), n_refs=n_refs, n_sentences=n_sentences
    )
