"""Reader for the REFER format: RefCOCO, RefCOCO+ (unc) and RefCOCOg (umd, google), read as published.

Layout under a data root (the layout of github lichengunc/refer, images in the COCO train2014 folder)::

    DATA_ROOT/refcoco/refs(unc).p          refcoco/instances.json
    DATA_ROOT/refcoco+/refs(unc).p         refcoco+/instances.json
    DATA_ROOT/refcocog/refs(umd).p         refcocog/refs(google).p   refcocog/instances.json
    DATA_ROOT/images/train2014/COCO_train2014_000000000009.jpg ...

``images/mscoco/images/train2014`` (REFER's own layout) is found too, or any folder given as ``image_dir``.

- ``refs(*).p`` is a pickle written by Python 2 (protocol 0, 1 or 2) of a list of refs
  ``{ref_id, ann_id, image_id, split, sentences: [{sent_id, raw, sent, tokens}], category_id}``.
  It is read with a restricted unpickler (plain containers, strings and numbers only: a refs file has no
  reason to name a class, so one that does is refused rather than executed). Python 2 byte strings are
  decoded one by one: UTF-8 where valid, latin-1 only where not (docs/BENCHMARK.md#what-a-data-set-must-hold).
- ``instances.json`` is COCO's: ``images`` (id, file_name, height, width), ``annotations`` (id, image_id,
  polygon or RLE ``segmentation``), ``categories``.
- Ground truth (docs/METHODS.md#ground-truth, the LAVT / Global-Local CLIP convention): every polygon part is rasterised with
  pycocotools, the parts are summed, and foreground is where the sum equals 1 (pixels covered by two parts
  are background). ``gt_union=True`` takes the plain union instead.

The unit of evaluation is the sentence. :meth:`ReferDataset.images` yields the split's sentences grouped by
image (``ImageGroup``) in a fixed order (image id, then ref id, then sentence id), so per-image work is done
once and a run with ``limit`` always takes the same first sentences.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from workers.engine.data.imaging import ImageDecodeError, decode_rgb
from workers.engine.data.refer_format import DATASET_SPLITS, DEFAULT_SPLIT_BY
from workers.engine.data.validate import (
    SegmentationError,
    clean_segmentation,
    decode_py2_strings,
    py2_text,
)

__all__ = [
    "DATASET_SPLITS",
    "DatasetError",
    "ImageGroup",
    "MissingImageError",
    "ReferDataset",
    "SentenceItem",
    "default_split_by",
    "gt_mask_from_segmentation",
    "load_refs_pickle",
]


class DatasetError(ValueError):
    """A dataset that cannot be read: a missing or corrupt file, an unknown split, a bad record."""


class MissingImageError(DatasetError):
    """An image named in ``instances.json`` is not in the image folder."""

    def __init__(self, path: Path, image_id: int) -> None:
        super().__init__(
            f"image {image_id} is missing from the image folder: {path} does not exist "
            "(put the COCO train2014 images there, or pass --skip-missing to score its sentences IoU 0)"
        )
        self.path = path
        self.image_id = image_id


def default_split_by(dataset: str) -> str:
    """``unc`` for RefCOCO and RefCOCO+, ``umd`` for RefCOCOg."""
    _check_dataset(dataset)
    return DEFAULT_SPLIT_BY[dataset]


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASET_SPLITS:
        raise DatasetError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASET_SPLITS)}")


# --------------------------------------------------------------------------------------------------------
# Pickles written by Python 2


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles containers, strings and numbers only; any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, and a refs file holds plain data only")


def load_refs_pickle(path: Path) -> list[dict]:
    """Load a ``refs(*).p`` file (any pickle protocol 0-5; Python 2 strings decoded string by string).

    Raises:
        DatasetError: the file is missing, is not a pickle, or does not hold a list of ref dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"refs file not found: {path}")
    data = path.read_bytes()
    try:
        # Python 2 ``str`` values arrive as bytes and are decoded one by one (UTF-8 where valid, latin-1
        # only where not: workers.engine.data.validate.decode_py2_strings, docs/BENCHMARK.md).
        refs = decode_py2_strings(_PlainUnpickler(io.BytesIO(data), encoding="bytes").load())
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        MemoryError,
        RecursionError,
    ) as exc:
        raise DatasetError(f"corrupt refs pickle {path}: {exc}") from exc
    if not isinstance(refs, list):
        raise DatasetError(
            f"corrupt refs pickle {path}: expected a list of refs, found {type(refs).__name__}"
        )
    for index, ref in enumerate(refs):
        missing = (
            {"ref_id", "ann_id", "image_id", "split", "sentences"} - set(ref)
            if isinstance(ref, dict)
            else None
        )
        if missing is None or missing:
            what = f"keys {sorted(missing)} missing" if missing else f"a {type(ref).__name__}, not a dict"
            raise DatasetError(f"corrupt refs pickle {path}: ref #{index} is not a ref ({what})")
    return refs


def _text(value: Any) -> str:
    """A Python 2 string as ``str`` (bytes: UTF-8 where valid, latin-1 where not)."""
    return py2_text(value) if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------------------------------------
# Ground-truth masks


def gt_mask_from_segmentation(
    segmentation: Any, height: int, width: int, *, union: bool = False
) -> np.ndarray:
    """Rasterise a COCO ``segmentation`` to an ``H x W`` bool mask by the convention of docs/METHODS.md#ground-truth.

    Polygons (a list of ``[x0, y0, x1, y1, ...]`` parts; a flat list is one part): each part is rasterised,
    the parts are summed and foreground is ``sum == 1``, so pixels covered by two parts are background; with
    ``union=True`` the plain union. An RLE ``segmentation`` (crowd annotations; compressed or uncompressed)
    is one part. Everything is checked by ``workers.engine.data.validate.clean_segmentation`` before
    pycocotools sees it.

    Raises:
        SegmentationError: a segmentation that cannot be rasterised safely or correctly (a ``DatasetError``
            subclass would need the file; callers add it).
    """
    cleaned = clean_segmentation(segmentation, height, width)
    if isinstance(cleaned, list):
        rles = mask_utils.frPyObjects(cleaned, height, width)
        stack = mask_utils.decode(rles)  # H x W x P uint8
        total = stack.astype(np.int32).sum(axis=2)
        return total > 0 if union else total == 1
    rle = cleaned
    if isinstance(rle["counts"], list):
        rle = mask_utils.frPyObjects(rle, height, width)
    return mask_utils.decode(rle).astype(bool)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def decode_dataset_image(data: bytes, height: int, width: int, *, path: Path, where: Path) -> np.ndarray:
    """Decode a data set's image (see ``ReferDataset.load_image``) and check its size against ``where``.

    Raises:
        DatasetError: naming ``path``: undecodable, or neither the stored nor the EXIF-rotated picture is
            ``width x height``.
    """
    try:
        rgb = decode_rgb(data, exif=False)
        if rgb.shape[:2] != (height, width):
            upright = decode_rgb(data, exif=True)
            if upright.shape[:2] == (height, width):
                rgb = upright
    except ImageDecodeError as exc:
        raise DatasetError(f"cannot decode image {path}: {exc}") from None
    if rgb.shape[:2] != (height, width):
        raise DatasetError(f"image {path} is {rgb.shape[1]}x{rgb.shape[0]} but {where} says {width}x{height}")
    return rgb


# --------------------------------------------------------------------------------------------------------
# The dataset


@dataclass(frozen=True)
class SentenceItem:
    """One sentence to evaluate: the expression and the ids that locate its ground truth."""

    sent_id: int
    ref_id: int
    ann_id: int
    image_id: int
    text: str


@dataclass(frozen=True)
class ImageGroup:
    """All sentences of the split on one image, in (ref id, sentence id) order."""

    image_id: int
    file_name: str
    height: int
    width: int
    sentences: tuple[SentenceItem, ...] = field(default_factory=tuple)


class ReferDataset:
    """One split of one REFER dataset.

    Args:
        data_root: folder holding ``refcoco/``, ``refcoco+/``, ``refcocog/`` and ``images/``.
        dataset: ``refcoco``, ``refcoco+`` or ``refcocog``.
        split: a split the refs file holds (``val``, ``testA``, ``testB``, ``test``; also ``train``).
        split_by: ``unc``, ``umd`` or ``google``; default ``unc`` for RefCOCO/RefCOCO+ and ``umd`` for RefCOCOg.
        image_dir: the COCO train2014 folder; default ``DATA_ROOT/images/train2014`` (or REFER's
            ``DATA_ROOT/images/mscoco/images/train2014`` where that exists).
        text_field: the sentence field used as the expression (``sent``, REFER's cleaned lower-case text, or
            ``raw``).
        gt_union: ground truth as the plain union of polygon parts instead of the convention of docs/METHODS.md#ground-truth.

    Raises:
        DatasetError: unknown dataset, split or split_by (the message lists the valid ones), missing or
            corrupt files, a ref whose annotation or image is not in ``instances.json``.
    """

    def __init__(
        self,
        data_root: Path | str,
        dataset: str,
        split: str,
        *,
        split_by: str | None = None,
        image_dir: Path | str | None = None,
        text_field: str = "sent",
        gt_union: bool = False,
    ) -> None:
        _check_dataset(dataset)
        split_by = split_by or DEFAULT_SPLIT_BY[dataset]
        if split_by not in DATASET_SPLITS[dataset]:
            raise DatasetError(
                f"{dataset} has no {split_by!r} split-by; it has: {', '.join(DATASET_SPLITS[dataset])}"
            )
        if split not in DATASET_SPLITS[dataset][split_by]:
            raise DatasetError(
                f"{dataset} ({split_by}) has no split {split!r}; its splits are: "
                f"{', '.join(DATASET_SPLITS[dataset][split_by])}"
            )
        if text_field not in ("sent", "raw"):
            raise DatasetError(f"text_field must be 'sent' or 'raw', got {text_field!r}")
        self.data_root = Path(data_root)
        if not self.data_root.is_dir():
            raise DatasetError(f"data root not found: {self.data_root}")
        self.dataset, self.split, self.split_by = dataset, split, split_by
        self.text_field = text_field
        self.gt_union = gt_union
        self.refs_path = self.data_root / dataset / f"refs({split_by}).p"
        self.instances_path = self.data_root / dataset / "instances.json"
        self.image_dir = Path(image_dir) if image_dir is not None else self._default_image_dir()

        refs = load_refs_pickle(self.refs_path)
        instances = self._load_instances(self.instances_path)
        self._images = {int(img["id"]): img for img in instances.get("images", [])}
        self._anns = {int(ann["id"]): ann for ann in instances.get("annotations", [])}
        self._groups = self._build_groups(refs)

    # -- loading ---------------------------------------------------------------------------------------
    def _default_image_dir(self) -> Path:
        plain = self.data_root / "images" / "train2014"
        refer_layout = self.data_root / "images" / "mscoco" / "images" / "train2014"
        return refer_layout if not plain.is_dir() and refer_layout.is_dir() else plain

    @staticmethod
    def _load_instances(path: Path) -> dict:
        if not path.is_file():
            raise DatasetError(f"instances file not found: {path}")
        try:
            with path.open("rb") as fh:
                data = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"corrupt instances file {path}: {exc}") from exc
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise DatasetError(f"corrupt instances file {path}: expected COCO 'images' and 'annotations'")
        return data

    def _build_groups(self, refs: Sequence[dict]) -> list[ImageGroup]:
        by_image: dict[int, list[SentenceItem]] = {}
        seen: set[int] = set()
        for ref in refs:
            if _text(ref["split"]) != self.split:
                continue
            ref_id, ann_id, image_id = int(ref["ref_id"]), int(ref["ann_id"]), int(ref["image_id"])
            if ann_id not in self._anns:
                raise DatasetError(
                    f"ref {ref_id} names annotation {ann_id}, which {self.instances_path} lacks"
                )
            if image_id not in self._images:
                raise DatasetError(f"ref {ref_id} names image {image_id}, which {self.instances_path} lacks")
            for sentence in ref["sentences"]:
                sent_id = int(sentence["sent_id"])
                if sent_id in seen:
                    raise DatasetError(f"sentence id {sent_id} appears twice in {self.refs_path}")
                seen.add(sent_id)
                text = sentence.get(self.text_field, sentence.get("sent", sentence.get("raw", "")))
                by_image.setdefault(image_id, []).append(
                    SentenceItem(
                        sent_id=sent_id, ref_id=ref_id, ann_id=ann_id, image_id=image_id, text=_text(text)
                    )
                )
        groups = []
        for image_id in sorted(by_image):
            image = self._images[image_id]
            items = tuple(sorted(by_image[image_id], key=lambda s: (s.ref_id, s.sent_id)))
            groups.append(
                ImageGroup(
                    image_id=image_id,
                    file_name=_text(image["file_name"]),
                    height=int(image["height"]),
                    width=int(image["width"]),
                    sentences=items,
                )
            )
        return groups

    # -- reading ---------------------------------------------------------------------------------------
    @property
    def n_sentences(self) -> int:
        return sum(len(g.sentences) for g in self._groups)

    def images(self, *, limit: int | None = None, image_ids: Sequence[int] | None = None) -> list[ImageGroup]:
        """The split's sentences grouped by image, ordered by image id.

        Args:
            limit: keep only the first ``limit`` sentences in that order (the last group may be cut short).
            image_ids: keep only these images (applied after ``limit``, so a shard of a limited run sees
                exactly the sentences the whole run would).
        """
        groups = self._groups
        if limit is not None:
            if limit < 0:
                raise DatasetError(f"limit must be >= 0, got {limit}")
            kept, left = [], limit
            for group in groups:
                if left <= 0:
                    break
                take = group.sentences[:left]
                kept.append(ImageGroup(group.image_id, group.file_name, group.height, group.width, take))
                left -= len(take)
            groups = kept
        if image_ids is not None:
            wanted = {int(i) for i in image_ids}
            groups = [g for g in groups if g.image_id in wanted]
        return list(groups)

    def iter_sentences(self, *, limit: int | None = None) -> Iterator[SentenceItem]:
        for group in self.images(limit=limit):
            yield from group.sentences

    def image_path(self, group: ImageGroup) -> Path:
        return self.image_dir / group.file_name

    def load_image(self, group: ImageGroup) -> tuple[np.ndarray, bytes]:
        """The image as ``H x W x 3`` uint8 RGB and its bytes, decoded as uploads are
        (``workers.engine.data.imaging.decode_rgb``: 16-bit, CMYK, palette, alpha).

        Pixels are taken as stored (COCO's annotations ignore EXIF orientation), unless only the EXIF-rotated
        picture has the size ``instances.json`` gives: then the annotations were made on the rotated one.

        Raises:
            MissingImageError: the file is not in the image folder.
            DatasetError: it cannot be decoded, or its size differs from ``instances.json``.
        """
        path = self.image_path(group)
        if not path.is_file():
            raise MissingImageError(path, group.image_id)
        data = path.read_bytes()
        rgb = decode_dataset_image(data, group.height, group.width, path=path, where=self.instances_path)
        return rgb, data

    def gt_mask(self, ann_id: int) -> np.ndarray:
        """The ground-truth ``H x W`` bool mask of one annotation (convention set by ``gt_union``).

        Raises:
            DatasetError: the annotation is missing, or its segmentation breaks a rule of
                ``workers.engine.data.validate`` (the message names the file and the annotation).
        """
        ann = self._anns.get(int(ann_id))
        if ann is None:
            raise DatasetError(f"annotation {ann_id} is not in {self.instances_path}")
        image = self._images.get(_int_or_none(ann.get("image_id")))
        if image is None:
            raise DatasetError(
                f"{self.instances_path}: annotation {ann_id} names image {ann.get('image_id')!r}, which it lacks"
            )
        try:
            return gt_mask_from_segmentation(
                ann.get("segmentation"), int(image["height"]), int(image["width"]), union=self.gt_union
            )
        except SegmentationError as exc:
            raise DatasetError(f"{self.instances_path}: annotation {ann_id}: {exc}") from None

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity of what is read (stored with a run, compared on resume)."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "split_by": self.split_by,
            "text_field": self.text_field,
            "gt_union": self.gt_union,
        }
