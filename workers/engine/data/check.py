"""``check_dataset``: every problem of a REFER data set at once, without models. Torch-free.

``manage.py benchmark --check`` prints what this returns. It reads the refs pickle of each split-by of the
data set, ``instances.json`` and every image the refs name, and applies the rules the reader applies while a
run is going (``workers.engine.data.validate``, ``workers.engine.data.imaging``), collecting each problem
with the file and the ref, annotation or image it concerns instead of stopping at the first one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.engine.data.refer import (
    DatasetError,
    _int_or_none,
    _text,
    decode_dataset_image,
    gt_mask_from_segmentation,
    load_refs_pickle,
)
from workers.engine.data.refer_format import DATASET_SPLITS
from workers.engine.data.validate import SegmentationError

__all__ = ["CheckReport", "Problem", "check_dataset"]


@dataclass(frozen=True)
class Problem:
    """One problem: the file, what in it (``"annotation 12"``, ``"ref 3"``, ``"image 9"``) and what is wrong."""

    file: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.where}: {self.message}" if self.where else f"{self.file}: {self.message}"


@dataclass
class CheckReport:
    """What :func:`check_dataset` read and found."""

    problems: list[Problem]
    n_refs: int = 0
    n_sentences: int = 0
    n_annotations: int = 0
    n_images: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _positive_int(value: Any) -> int | None:
    number = _int_or_none(value)
    return number if number is not None and number >= 1 and not isinstance(value, bool) else None


def check_dataset(
    data_root: Path | str,
    dataset: str,
    *,
    split_by: Sequence[str] | None = None,
    image_dir: Path | str | None = None,
    text_field: str = "sent",
    check_images: bool = True,
    on_step: Callable[[], None] | None = None,
) -> CheckReport:
    """Check ``dataset`` under ``data_root`` (the REFER layout of ``workers.engine.data.refer``).

    Args:
        split_by: the refs files to check (default: every split-by the data set has whose file exists;
            the first one at least).
        image_dir: the image folder (default as ``ReferDataset``).
        check_images: decode every image the refs name (slow on a full data set; the sizes are checked too).
        on_step: called once per annotation and image checked (a progress bar).

    Returns a :class:`CheckReport` listing every problem found; an unknown data set or a missing root is one
    problem, and then nothing else is read.
    """
    root = Path(data_root)
    report = CheckReport(problems=[])
    add = report.problems.append
    if dataset not in DATASET_SPLITS:
        add(Problem(str(root), "", f"unknown dataset {dataset!r}; known: {', '.join(DATASET_SPLITS)}"))
        return report
    if not root.is_dir():
        add(Problem(str(root), "", "the data root does not exist"))
        return report
    instances_path = root / dataset / "instances.json"
    wanted = list(split_by or [])
    if not wanted:
        wanted = [s for s in DATASET_SPLITS[dataset] if (root / dataset / f"refs({s}).p").is_file()]
        wanted = wanted or [next(iter(DATASET_SPLITS[dataset]))]
    for name in wanted:
        if name not in DATASET_SPLITS[dataset]:
            add(Problem(str(root / dataset), "", f"{dataset} has no split-by {name!r}"))
    wanted = [s for s in wanted if s in DATASET_SPLITS[dataset]]

    # instances.json ----------------------------------------------------------------------------------
    images: dict[int, dict] = {}
    anns: dict[int, dict] = {}
    file = str(instances_path)
    instances: Any = None
    if not instances_path.is_file():
        add(Problem(file, "", "the instances file does not exist"))
    else:
        try:
            instances = json.loads(instances_path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            add(Problem(file, "", f"not valid JSON ({exc})"))
    if instances is not None and not (
        isinstance(instances, dict)
        and isinstance(instances.get("images"), list)
        and isinstance(instances.get("annotations"), list)
    ):
        add(Problem(file, "", "expected a COCO object with 'images' and 'annotations' lists"))
        instances = None
    if instances is not None:
        for index, image in enumerate(instances["images"]):
            where = f"image #{index}"
            if not isinstance(image, dict) or _int_or_none(image.get("id")) is None:
                add(Problem(file, where, "an image record needs an integer 'id'"))
                continue
            image_id = int(image["id"])
            where = f"image {image_id}"
            if image_id in images:
                add(Problem(file, where, "the id appears twice"))
            bad = [k for k in ("height", "width") if _positive_int(image.get(k)) is None]
            if bad:
                add(Problem(file, where, f"{' and '.join(bad)} must be positive integers"))
                continue
            if not isinstance(image.get("file_name"), str) or not image["file_name"]:
                add(Problem(file, where, "'file_name' must be a file name"))
                continue
            images[image_id] = image
        for index, ann in enumerate(instances["annotations"]):
            if not isinstance(ann, dict) or _int_or_none(ann.get("id")) is None:
                add(Problem(file, f"annotation #{index}", "an annotation needs an integer 'id'"))
                continue
            ann_id = int(ann["id"])
            where = f"annotation {ann_id}"
            if ann_id in anns:
                add(Problem(file, where, "the id appears twice"))
            anns[ann_id] = ann
            image = images.get(_int_or_none(ann.get("image_id")))
            if image is None:
                add(Problem(file, where, f"names image {ann.get('image_id')!r}, which the file lacks"))
                continue
            report.n_annotations += 1
            height, width = int(image["height"]), int(image["width"])
            try:
                mask = gt_mask_from_segmentation(ann.get("segmentation"), height, width)
            except SegmentationError as exc:
                add(Problem(file, where, str(exc)))
            else:
                if not mask.any():
                    add(
                        Problem(
                            file, where, f"its segmentation covers no pixel of the {width}x{height} image"
                        )
                    )
            if on_step:
                on_step()

    # refs ------------------------------------------------------------------------------------------
    used_images: set[int] = set()
    for name in wanted:
        refs_path = root / dataset / f"refs({name}).p"
        file = str(refs_path)
        try:
            refs = load_refs_pickle(refs_path)
        except DatasetError as exc:
            add(Problem(file, "", str(exc)))
            continue
        splits = set(DATASET_SPLITS[dataset][name])
        seen: set[int] = set()
        for ref in refs:
            report.n_refs += 1
            where = f"ref {ref.get('ref_id')!r}"
            ids = {k: _int_or_none(ref.get(k)) for k in ("ref_id", "ann_id", "image_id")}
            bad = [k for k, v in ids.items() if v is None]
            if bad:
                add(Problem(file, where, f"{', '.join(bad)} must be integers"))
                continue
            if _text(ref.get("split")) not in splits | {"train"}:
                add(
                    Problem(
                        file, where, f"split {ref.get('split')!r} is not one of {', '.join(sorted(splits))}"
                    )
                )
            if instances is not None:
                if ids["ann_id"] not in anns:
                    add(
                        Problem(
                            file, where, f"names annotation {ids['ann_id']}, which {instances_path} lacks"
                        )
                    )
                if ids["image_id"] not in images:
                    add(Problem(file, where, f"names image {ids['image_id']}, which {instances_path} lacks"))
                else:
                    used_images.add(ids["image_id"])
                ann = anns.get(ids["ann_id"])
                if ann is not None and _int_or_none(ann.get("image_id")) != ids["image_id"]:
                    add(
                        Problem(
                            file,
                            where,
                            f"names image {ids['image_id']} but its annotation {ids['ann_id']} is on image "
                            f"{ann.get('image_id')!r}",
                        )
                    )
            sentences = ref.get("sentences")
            if not isinstance(sentences, list) or not sentences:
                add(Problem(file, where, "'sentences' must be a non-empty list"))
                continue
            for sentence in sentences:
                sent_id = _int_or_none(sentence.get("sent_id")) if isinstance(sentence, dict) else None
                if sent_id is None:
                    add(Problem(file, where, "a sentence needs an integer 'sent_id'"))
                    continue
                report.n_sentences += 1
                if sent_id in seen:
                    add(Problem(file, f"{where}, sentence {sent_id}", "the sentence id appears twice"))
                seen.add(sent_id)
                text = sentence.get(text_field, sentence.get("sent", sentence.get("raw")))
                if not isinstance(text, str) or not text.strip():
                    add(Problem(file, f"{where}, sentence {sent_id}", f"no text in {text_field!r}"))

    # image files -------------------------------------------------------------------------------------
    if check_images and images:
        folder = Path(image_dir) if image_dir is not None else _default_image_dir(root)
        for image_id in sorted(used_images or images):
            image = images[image_id]
            path = folder / image["file_name"]
            report.n_images += 1
            if not path.is_file():
                add(Problem(str(path), f"image {image_id}", "the file is missing from the image folder"))
            else:
                try:
                    decode_dataset_image(
                        path.read_bytes(),
                        int(image["height"]),
                        int(image["width"]),
                        path=path,
                        where=instances_path,
                    )
                except DatasetError as exc:
                    add(Problem(str(path), f"image {image_id}", str(exc)))
            if on_step:
                on_step()
    return report


def _default_image_dir(root: Path) -> Path:
    plain = root / "images" / "train2014"
    refer_layout = root / "images" / "mscoco" / "images" / "train2014"
    return refer_layout if not plain.is_dir() and refer_layout.is_dir() else plain
