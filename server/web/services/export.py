"""Exports of reviewed masks: COCO JSON with RLE masks, and a RefCOCO-style dataset zip.

Only expressions whose latest review accepted a candidate or saved a corrected mask are exported
(``server.web.selectors.reviewed_masks``); rejected and unreviewed ones are left out.

COCO (``coco_export``): one annotation per exported expression, ``segmentation`` a COCO RLE dict with
``counts`` as a string (pycocotools' ``annToMask`` reads it as it is), ``bbox`` ``[x, y, w, h]``,
``area`` the foreground pixel count, plus the expression's text and ids. Images are those with at
least one exported annotation, ``id`` the app's image id, ``width``/``height`` of the upright image.

RefCOCO-style (``refer_export_zip``): the layout of github lichengunc/refer, written by the same REFER writer
as the benchmark's synthetic set (``workers.engine.data.refer_format``, torch-free), which the benchmark's
reader (``workers/engine/data/refer.py``) reads unchanged once the zip is unpacked into a data root::

    <dataset>/refs(<split_by>).p     pickle (protocol 2) of refs {ref_id, ann_id, image_id, split,
                                     sentences: [{sent_id, raw, sent, tokens}], sent_ids, category_id, file_name}
    <dataset>/instances.json         COCO images / annotations (RLE segmentation) / categories
    images/train2014/<file_name>     the images, upright (a file with an EXIF rotation is re-encoded
                                     as PNG so its pixels match width x height, as the reader checks)
    README.txt                       how to run the benchmark on it

One ref per expression, with one sentence; ``ref_id``, ``ann_id`` and ``sent_id`` are the expression's id.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

from PIL import Image as PILImage
from pycocotools import mask as mask_utils

from server.ris.errors import InvalidInput
from server.ris.models import Image, Project
from server.ris.services.image_files import image_load_rgb, image_read_bytes
from server.ris.services.images import EXIF_ORIENTATION_TAG
from server.web.selectors import ReviewedMask, reviewed_masks
from workers.engine.data.refer_format import (
    DATASET_SPLITS,
    DEFAULT_SPLIT_BY,
    IMAGE_FOLDER,
    refer_files,
    sentence_record,
)

CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}
# The REFER files each dataset name is read from, and the splits the benchmark's reader accepts there.
REFER_SPLIT_BY = DEFAULT_SPLIT_BY
REFER_SPLITS = {dataset: DATASET_SPLITS[dataset][split_by] for dataset, split_by in DEFAULT_SPLIT_BY.items()}


def _rle_bytes(rle: dict[str, Any]) -> dict[str, Any]:
    return {"size": [int(v) for v in rle["size"]], "counts": str(rle["counts"]).encode("ascii")}


def mask_geometry(rle: dict[str, Any]) -> tuple[int, list[float]]:
    """Area (pixels) and COCO ``[x, y, w, h]`` box of an RLE mask."""
    encoded = _rle_bytes(rle)
    area = int(mask_utils.area(encoded))
    bbox = [float(v) for v in mask_utils.toBbox(encoded)]
    return area, bbox


def _annotation(item: ReviewedMask) -> dict[str, Any]:
    area, bbox = mask_geometry(item.rle)
    return {
        "id": item.expression.pk,
        "image_id": item.image.pk,
        "category_id": CATEGORY["id"],
        "segmentation": {"size": [int(v) for v in item.rle["size"]], "counts": str(item.rle["counts"])},
        "area": area,
        "bbox": bbox,
        "iscrowd": 0,
    }


def coco_export(*, project: Project) -> dict[str, Any]:
    """COCO JSON of ``project``'s accepted and corrected masks (see the module docstring)."""
    items = reviewed_masks(project=project)
    images: dict[int, Image] = {}
    annotations = []
    for item in items:
        images.setdefault(item.image.pk, item.image)
        annotation = _annotation(item)
        annotation.update(
            {
                "expression": item.expression.text,
                "expression_id": item.expression.pk,
                "decision": item.review.decision,
                "review_id": item.review.pk,
                "candidate_id": item.review.candidate_id,
            }
        )
        annotations.append(annotation)
    return {
        "info": {
            "description": f"RIS annotate export of project {project.name!r}",
            "version": "1.0",
            "date_created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "licenses": [],
        "images": [
            {
                "id": image.pk,
                "file_name": image.original_name,
                "width": image.width,
                "height": image.height,
                "sha256": image.sha256,
            }
            for image in images.values()
        ],
        "annotations": annotations,
        "categories": [CATEGORY],
    }


def _refer_check(dataset: str, split: str) -> str:
    if dataset not in REFER_SPLIT_BY:
        raise InvalidInput(f"dataset must be one of {', '.join(REFER_SPLIT_BY)}; got {dataset!r}.")
    if split not in REFER_SPLITS[dataset]:
        raise InvalidInput(
            f"{dataset} ({REFER_SPLIT_BY[dataset]}) has no split {split!r}; choose one of "
            f"{', '.join(REFER_SPLITS[dataset])}."
        )
    return REFER_SPLIT_BY[dataset]


def _needs_reencode(image: Image, data: bytes) -> bool:
    """True unless the stored file is a plain JPEG or PNG whose pixels are already upright RGB/grey."""
    if image.format not in ("JPEG", "PNG"):
        return True
    with PILImage.open(io.BytesIO(data)) as picture:
        if picture.mode not in ("RGB", "L"):
            return True
        try:
            orientation = int(picture.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
        except Exception:  # unreadable EXIF: the upload treated the image as upright
            orientation = 1
        return orientation != 1 or picture.size != (image.width, image.height)


def _refer_image_file(image: Image) -> tuple[str, bytes]:
    """File name and bytes of ``image`` for the zip: the stored bytes, or an upright PNG."""
    data = image_read_bytes(image)
    stem = f"ris_{image.pk:012d}"
    if not _needs_reencode(image, data):
        return f"{stem}.{'jpg' if image.format == 'JPEG' else 'png'}", data
    buffer = io.BytesIO()
    PILImage.fromarray(image_load_rgb(image)).save(buffer, format="PNG")
    return f"{stem}.png", buffer.getvalue()


def refer_refs_and_instances(
    *, items: Iterable[ReviewedMask], split: str, file_names: dict[int, str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The refs list and the instances.json dict for ``items`` (one ref per expression)."""
    refs: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    images: dict[int, dict[str, Any]] = {}
    for item in items:
        image = item.image
        images.setdefault(
            image.pk,
            {"id": image.pk, "file_name": file_names[image.pk], "height": image.height, "width": image.width},
        )
        annotations.append(_annotation(item))
        expression_id = item.expression.pk
        refs.append(
            {
                "ref_id": expression_id,
                "ann_id": expression_id,
                "image_id": image.pk,
                "split": split,
                "sentences": [sentence_record(item.expression.text, expression_id)],
                "sent_ids": [expression_id],
                "category_id": CATEGORY["id"],
                "file_name": file_names[image.pk],
            }
        )
    instances = {
        "info": {"description": "RIS annotate RefCOCO-style export"},
        "images": list(images.values()),
        "annotations": annotations,
        "categories": [CATEGORY],
    }
    return refs, instances


def refer_export_zip(*, project: Project, dataset: str = "refcoco", split: str = "val") -> IO[bytes]:
    """A zip of ``project``'s accepted and corrected masks in the REFER layout, rewound to its start.

    ``dataset`` (``refcoco``, ``refcoco+``, ``refcocog``) names the folder and, with it, the refs file
    (``refs(unc).p`` or ``refs(umd).p``); every ref gets ``split``. The file is spooled to disk past
    32 MB, so large projects do not sit in memory.
    """
    split_by = _refer_check(dataset, split)
    items = reviewed_masks(project=project)
    spool = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)  # noqa: SIM115 (returned open)
    file_names: dict[int, str] = {}
    with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for item in items:
            image = item.image
            if image.pk in file_names:
                continue
            name, data = _refer_image_file(image)
            file_names[image.pk] = name
            archive.writestr(zipfile.ZipInfo(f"{IMAGE_FOLDER}/{name}", _ZIP_TIME), data, zipfile.ZIP_STORED)
        refs, instances = refer_refs_and_instances(items=items, split=split, file_names=file_names)
        for relpath, content in refer_files(dataset, split_by, refs, instances).items():
            archive.writestr(zipfile.ZipInfo(relpath, _ZIP_TIME), content, zipfile.ZIP_DEFLATED)
        archive.writestr(
            zipfile.ZipInfo("README.txt", _ZIP_TIME),
            _README.format(
                project=project.name, dataset=dataset, split=split, n=len(refs), split_by=split_by
            ),
            zipfile.ZIP_DEFLATED,
        )
    spool.seek(0)
    return spool


_ZIP_TIME = (2024, 1, 1, 0, 0, 0)
_README = """RefCOCO-style export of project {project!r} from RIS annotate: {n} referring expressions.

Layout (as github lichengunc/refer):
  {dataset}/refs({split_by}).p   refs, every one in split {split!r}
  {dataset}/instances.json      COCO images and annotations (RLE masks)
  images/train2014/             the images

Unpack into a folder DATA and evaluate a pipeline on it:
  python manage.py benchmark --dataset {dataset} --split {split} --pipeline global_local --data-root DATA
"""
