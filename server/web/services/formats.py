"""Exports beside COCO RLE and REFER, and the import of COCO annotations as reviewed masks.

Every export covers the expressions whose latest review kept a mask (``reviewed_masks``), labelled with
the expression's category (``Expression.category``, ``"object"`` when empty); category ids follow the
project's ``categories`` list (1-based; a category used but not listed comes after, sorted).

- ``coco_polygons_export``: COCO JSON, ``segmentation`` a list of polygons ``[x0, y0, x1, y1, ...]``
  (pixel-corner vertices, ``server.web.services.polygons``; holes are filled, as COCO polygons have none).
- ``png_masks_zip``: ``masks/<image stem>__expr<id>.png`` (8-bit, 255 inside, 0 outside, the image's
  size) and ``masks.json`` naming each file's image, expression, category and decision.
- ``yolo_zip``: the Ultralytics segmentation layout: ``data.yaml`` (``path``, ``train``, ``val``,
  ``names``), ``images/train/<file>`` (upright images) and ``labels/train/<stem>.txt`` with one line per
  polygon: ``<class> x1 y1 x2 y2 ...`` normalised by the image's width and height to [0, 1]; the class
  is the 0-based category index.
- ``label_studio_export``: Label Studio tasks JSON: one task per image (``data.image`` the image's URL),
  one annotation whose ``result`` holds a ``polygonlabels`` region per expression, points in percent of
  the image (``original_width`` / ``original_height`` given), and a ``textarea`` region with the text.
- ``coco_import``: COCO JSON annotations (polygons, RLE or uncompressed RLE) onto the project's images,
  matched by ``file_name`` and size; each becomes an expression with a ``corrected`` review (the mask) by
  the importing user, no job. The text is the annotation's ``expression``, ``caption`` or ``sentences``
  (first), else its category's name.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from typing import IO, Any

import numpy as np
from django.db import transaction
from django.urls import reverse
from PIL import Image as PILImage
from pycocotools import mask as mask_utils

from server.ris.errors import InvalidInput
from server.ris.models import Expression, Image, Project
from server.ris.services.reviews import review_create
from server.ris.services.rle import rle_from_mask
from server.web.selectors import ReviewedMask, reviewed_masks
from server.web.services.export import _refer_image_file, mask_geometry
from server.web.services.polygons import flat, mask_to_polygons

DEFAULT_CATEGORY = "object"


def category_of(expression: Expression) -> str:
    return expression.category or DEFAULT_CATEGORY


def project_categories(project: Project, items: list[ReviewedMask]) -> list[str]:
    """The project's category names, then any used by ``items`` but not listed (sorted)."""
    names = [str(n) for n in (project.categories or [])]
    used = sorted({category_of(item.expression) for item in items} - set(names))
    return names + used if names or used else [DEFAULT_CATEGORY]


def decode(rle: dict[str, Any]) -> np.ndarray:
    """``H x W`` bool mask of an RLE with ``counts`` as ``str``."""
    encoded = {"size": [int(v) for v in rle["size"]], "counts": str(rle["counts"]).encode("ascii")}
    return mask_utils.decode(encoded).astype(bool)


def coco_polygons_export(*, project: Project) -> dict[str, Any]:
    """COCO JSON with polygon segmentations (see the module docstring)."""
    items = reviewed_masks(project=project)
    names = project_categories(project, items)
    images: dict[int, Image] = {}
    annotations = []
    for item in items:
        images.setdefault(item.image.pk, item.image)
        polygons = mask_to_polygons(decode(item.rle))
        area, bbox = mask_geometry(item.rle)
        annotations.append(
            {
                "id": item.expression.pk,
                "image_id": item.image.pk,
                "category_id": names.index(category_of(item.expression)) + 1,
                "segmentation": [flat(p) for p in polygons],
                "area": area,
                "bbox": bbox,
                "iscrowd": 0,
                "expression": item.expression.text,
                "decision": item.review.decision,
            }
        )
    return {
        "info": {"description": f"RIS annotate export of project {project.name!r} (polygons)"},
        "images": [
            {"id": i.pk, "file_name": i.original_name, "width": i.width, "height": i.height}
            for i in images.values()
        ],
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": n} for k, n in enumerate(names)],
    }


def _spooled() -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)


def png_masks_zip(*, project: Project) -> IO[bytes]:
    """A zip of one PNG per kept mask and ``masks.json`` (see the module docstring), rewound."""
    items = reviewed_masks(project=project)
    archive = _spooled()
    index = []
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for item in items:
            stem = item.image.original_name.rsplit(".", 1)[0] or f"image{item.image.pk}"
            name = f"masks/{stem}__expr{item.expression.pk}.png"
            buffer = io.BytesIO()
            PILImage.fromarray(decode(item.rle).astype(np.uint8) * 255, mode="L").save(buffer, "PNG")
            zf.writestr(name, buffer.getvalue())
            index.append(
                {
                    "file": name,
                    "image_id": item.image.pk,
                    "image": item.image.original_name,
                    "expression_id": item.expression.pk,
                    "expression": item.expression.text,
                    "category": category_of(item.expression),
                    "decision": item.review.decision,
                }
            )
        zf.writestr("masks.json", json.dumps(index, indent=1, ensure_ascii=False))
    archive.seek(0)
    return archive


def yolo_zip(*, project: Project) -> IO[bytes]:
    """A zip in the Ultralytics YOLO segmentation layout (see the module docstring), rewound."""
    items = reviewed_masks(project=project)
    names = project_categories(project, items)
    lines: dict[int, list[str]] = {}
    images: dict[int, Image] = {}
    for item in items:
        image = item.image
        images.setdefault(image.pk, image)
        cls = names.index(category_of(item.expression))
        for polygon in mask_to_polygons(decode(item.rle)):
            coords = " ".join(f"{x / image.width:.6f} {y / image.height:.6f}" for x, y in polygon)
            lines.setdefault(image.pk, []).append(f"{cls} {coords}")
    archive = _spooled()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for image in images.values():
            file_name, data = _refer_image_file(image)
            zf.writestr(f"images/train/{file_name}", data)
            stem = file_name.rsplit(".", 1)[0]
            zf.writestr(f"labels/train/{stem}.txt", "\n".join(lines.get(image.pk, [])) + "\n")
        yaml = ["path: .", "train: images/train", "val: images/train", "names:"]
        yaml += [f"  {k}: {json.dumps(n)}" for k, n in enumerate(names)]
        zf.writestr("data.yaml", "\n".join(yaml) + "\n")
    archive.seek(0)
    return archive


def label_studio_export(*, project: Project, base_url: str = "") -> list[dict[str, Any]]:
    """Label Studio tasks with polygon regions (see the module docstring)."""
    items = reviewed_masks(project=project)
    tasks: dict[int, dict[str, Any]] = {}
    for item in items:
        image = item.image
        task = tasks.setdefault(
            image.pk,
            {
                "id": image.pk,
                "data": {
                    "image": base_url + reverse("ris-api:image-file", args=[image.pk]),
                    "file_name": image.original_name,
                },
                "annotations": [{"result": []}],
            },
        )
        result = task["annotations"][0]["result"]
        for k, polygon in enumerate(mask_to_polygons(decode(item.rle))):
            result.append(
                {
                    "id": f"e{item.expression.pk}p{k}",
                    "type": "polygonlabels",
                    "from_name": "label",
                    "to_name": "image",
                    "original_width": image.width,
                    "original_height": image.height,
                    "image_rotation": 0,
                    "value": {
                        "points": [[100.0 * x / image.width, 100.0 * y / image.height] for x, y in polygon],
                        "closed": True,
                        "polygonlabels": [category_of(item.expression)],
                    },
                    "meta": {"text": [item.expression.text], "expression_id": item.expression.pk},
                }
            )
    return list(tasks.values())


def _import_mask(segmentation: Any, height: int, width: int, where: str) -> np.ndarray:
    try:
        if isinstance(segmentation, list):
            if not segmentation or not all(isinstance(p, list) and len(p) >= 6 for p in segmentation):
                raise InvalidInput(f"{where}: a polygon needs at least three points (six numbers).")
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation, dict) and "counts" in segmentation:
            if [int(v) for v in segmentation.get("size", [])] != [height, width]:
                raise InvalidInput(
                    f"{where}: the RLE size {segmentation.get('size')} is not [{height}, {width}]."
                )
            counts = segmentation["counts"]
            if isinstance(counts, list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = {"size": [height, width], "counts": str(counts).encode("ascii")}
        else:
            raise InvalidInput(f"{where}: 'segmentation' must be polygons or an RLE object.")
        return mask_utils.decode(rle).astype(bool)
    except InvalidInput:
        raise
    except Exception as error:  # pycocotools raises bare exceptions on malformed input
        raise InvalidInput(f"{where}: the segmentation could not be read ({error}).") from None


def coco_import(*, project: Project, data: bytes, user: Any) -> dict[str, Any]:
    """Import COCO annotations as reviewed (``corrected``) masks; returns ``{imported, skipped}``.

    Raises ``InvalidInput`` naming the annotation and the problem for malformed JSON or segmentation.
    ``skipped`` lists annotations whose image is not in the project (by ``file_name`` and size), in words.
    """
    try:
        coco = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInput(f"The file is not JSON ({error}).") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("annotations"), list):
        raise InvalidInput("A COCO file needs 'images' and 'annotations' lists.")
    coco_images = {img.get("id"): img for img in coco.get("images") or [] if isinstance(img, dict)}
    categories = {c.get("id"): c.get("name") for c in coco.get("categories") or [] if isinstance(c, dict)}
    ours = {(i.original_name, i.width, i.height): i for i in Image.objects.filter(project=project)}
    imported, skipped = 0, []
    with transaction.atomic():
        for n, ann in enumerate(coco["annotations"]):
            where = f"annotation {ann.get('id', n) if isinstance(ann, dict) else n}"
            if not isinstance(ann, dict):
                raise InvalidInput(f"{where}: not an object.")
            meta = coco_images.get(ann.get("image_id"))
            if meta is None:
                raise InvalidInput(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'.")
            image = ours.get((meta.get("file_name"), meta.get("width"), meta.get("height")))
            if image is None:
                skipped.append(f"{where}: no image {meta.get('file_name')!r} of that size in this project")
                continue
            mask = _import_mask(ann.get("segmentation"), image.height, image.width, where)
            sentences = ann.get("sentences") or []
            text = ann.get("expression") or ann.get("caption")
            if not text and sentences:
                first = sentences[0]
                text = first.get("raw") or first.get("sent") if isinstance(first, dict) else str(first)
            category = categories.get(ann.get("category_id")) or ""
            text = str(text or category or DEFAULT_CATEGORY)[: Expression.MAX_LENGTH]
            expression = Expression.objects.create(image=image, text=text, author=user, category=category)
            review_create(expression=expression, decision="corrected", reviewer=user, rle=rle_from_mask(mask))
            imported += 1
    return {"imported": imported, "skipped": skipped}
