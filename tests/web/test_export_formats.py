"""Exports beside COCO RLE and REFER (COCO polygons, PNG masks, YOLO segmentation, Label Studio JSON) and
the COCO import, each read back by its format's own reader and compared with the stored masks.

Tolerance for polygons: pixels may differ only on the mask's one-pixel outline (a ring inside or outside
its edge); measured here: no pixel differs (pixel-corner vertices, pycocotools' rasteriser). Holes are
filled (no polygon format here has holes): the masks below have none.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import yaml
from PIL import Image as PILImage
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from scipy import ndimage

from server.ris.models import Expression, Review
from server.ris.services import review_create
from server.ris.services.rle import rle_from_mask
from server.web.services.polygons import mask_to_polygons
from tests.server.factories import expression_make, image_make
from tests.web.conftest import job_with_candidates


def _outline(mask: np.ndarray) -> np.ndarray:
    return (mask ^ ndimage.binary_erosion(mask)) | (ndimage.binary_dilation(mask) ^ mask)


def _assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """Equal but for pixels on ``want``'s outline; and here in fact equal."""
    assert got.shape == want.shape
    assert not ((got ^ want) & ~_outline(want)).any()
    assert np.array_equal(got, want)


@pytest.fixture
def formats_project(reviewed_project, user):
    """``reviewed_project`` plus a blob with two parts (one touching a corner of the other diagonally)
    labelled ``dog``; the project's categories are ``["dog", "object"]``."""
    project = reviewed_project["project"]
    project.categories = ["dog", "object"]
    project.save()
    image = reviewed_project["images"][0]
    blob = expression_make(image, user, "the two dogs")
    Expression.objects.filter(pk=blob.pk).update(category="dog")
    job_with_candidates(blob)
    yy, xx = np.mgrid[:30, :40]
    mask = ((xx - 12) ** 2 / 64 + (yy - 12) ** 2 / 36) <= 1
    mask[20:25, 25:31] = True
    mask[25, 31] = True  # touches the block only at a corner
    review_create(expression=blob, decision="corrected", reviewer=user, rle=rle_from_mask(mask))
    expected = dict(reviewed_project["expected"])
    expected[blob.pk] = mask
    return {**reviewed_project, "expected": expected, "blob": blob}


def test_polygon_tracer_round_trips_through_pycocotools():
    rng = np.random.default_rng(3)
    for _ in range(5):
        mask = ndimage.binary_fill_holes(ndimage.gaussian_filter(rng.random((45, 70)), 2.5) > 0.5)
        polygons = mask_to_polygons(mask)
        rles = mask_utils.frPyObjects([[float(v) for p in poly for v in p] for poly in polygons], 45, 70)
        _assert_close(mask_utils.decode(mask_utils.merge(rles)).astype(bool), mask)
    assert mask_to_polygons(np.zeros((4, 4), bool)) == []
    assert mask_to_polygons(np.ones((2, 3), bool)) == [[(0, 0), (0, 2), (3, 2), (3, 0)]]


def test_coco_polygons_read_by_pycocotools(web_client, formats_project, tmp_path):
    project = formats_project["project"]
    response = web_client.get(f"/web/projects/{project.pk}/export/coco-polygons/")
    assert response.status_code == 200
    path = tmp_path / "coco.json"
    path.write_bytes(response.content)
    coco = COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["dog", "object"]
    assert set(coco.getAnnIds()) == set(formats_project["expected"])
    for ann_id, want in formats_project["expected"].items():
        ann = coco.loadAnns([ann_id])[0]
        assert isinstance(ann["segmentation"], list)
        _assert_close(coco.annToMask(ann).astype(bool), want)
    dog = coco.loadAnns([formats_project["blob"].pk])[0]
    assert coco.loadCats([dog["category_id"]])[0]["name"] == "dog"
    assert len(dog["segmentation"]) == 3  # ellipse, block, and the corner-touching pixel


def test_png_masks_read_by_pillow(web_client, formats_project):
    project = formats_project["project"]
    response = web_client.get(f"/web/projects/{project.pk}/export/png/")
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    index = json.loads(archive.read("masks.json"))
    assert {row["expression_id"] for row in index} == set(formats_project["expected"])
    for row in index:
        with PILImage.open(io.BytesIO(archive.read(row["file"]))) as picture:
            assert picture.format == "PNG" and picture.mode == "L"
            pixels = np.asarray(picture)
        assert set(np.unique(pixels)) <= {0, 255}
        assert np.array_equal(pixels == 255, formats_project["expected"][row["expression_id"]])
    assert {row["category"] for row in index} == {"dog", "object"}


def test_yolo_segmentation_layout(web_client, formats_project):
    """Ultralytics' documented layout: data.yaml (path, train, val, names), images/<split>/ and
    labels/<split>/<stem>.txt with ``class x1 y1 ...`` normalised to [0, 1]."""
    project = formats_project["project"]
    response = web_client.get(f"/web/projects/{project.pk}/export/yolo/")
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    config = yaml.safe_load(archive.read("data.yaml"))
    assert config["train"] == "images/train" and config["val"] == "images/train"
    assert config["names"] == {0: "dog", 1: "object"}
    labels = [n for n in archive.namelist() if n.startswith("labels/train/")]
    images = {
        n.rsplit("/", 1)[1].rsplit(".", 1)[0]: n for n in archive.namelist() if n.startswith("images/train/")
    }
    assert len(labels) == 2 and len(images) == 2
    by_class: dict[tuple[str, int], np.ndarray] = {}
    for label in labels:
        stem = label.rsplit("/", 1)[1][: -len(".txt")]
        with PILImage.open(io.BytesIO(archive.read(images[stem]))) as picture:
            width, height = picture.size
        for line in archive.read(label).decode().split("\n"):
            if not line:
                continue
            parts = line.split()
            cls, values = int(parts[0]), [float(v) for v in parts[1:]]
            assert cls in config["names"] and len(values) % 2 == 0 and len(values) >= 6
            assert all(0.0 <= v <= 1.0 for v in values)
            points = [values[i] * (width if i % 2 == 0 else height) for i in range(len(values))]
            rle = mask_utils.frPyObjects([points], height, width)
            mask = mask_utils.decode(mask_utils.merge(rle)).astype(bool)
            key = (stem, cls)
            by_class[key] = by_class.get(key, np.zeros_like(mask)) | mask
    # Per image and class, the union of the lines is the union of the stored masks.
    first, second = formats_project["images"]
    want = formats_project["expected"]
    acc, cor, blob = (
        formats_project["accepted"].pk,
        formats_project["corrected"].pk,
        formats_project["blob"].pk,
    )
    assert np.array_equal(by_class[(f"ris_{first.pk:012d}", 1)], want[acc])
    assert np.array_equal(by_class[(f"ris_{first.pk:012d}", 0)], want[blob])
    assert np.array_equal(by_class[(f"ris_{second.pk:012d}", 1)], want[cor])


def test_label_studio_tasks(web_client, formats_project):
    """Label Studio's import format: a list of tasks with ``data`` and ``annotations[].result[]``; a
    ``polygonlabels`` region has ``from_name``, ``to_name``, ``original_width``/``height`` and
    ``value.points`` in percent of the image."""
    project = formats_project["project"]
    response = web_client.get(f"/web/projects/{project.pk}/export/label-studio/")
    assert response.status_code == 200
    tasks = response.json()
    assert isinstance(tasks, list) and len(tasks) == 2
    masks: dict[int, np.ndarray] = {}
    for task in tasks:
        assert task["data"]["image"].startswith("http://testserver/api/images/")
        for region in task["annotations"][0]["result"]:
            assert region["type"] == "polygonlabels"
            assert region["from_name"] == "label" and region["to_name"] == "image"
            width, height = region["original_width"], region["original_height"]
            value = region["value"]
            assert value["polygonlabels"][0] in ("dog", "object")
            assert all(0 <= x <= 100 and 0 <= y <= 100 for x, y in value["points"])
            points = [c for x, y in value["points"] for c in (x * width / 100, y * height / 100)]
            mask = mask_utils.decode(
                mask_utils.merge(mask_utils.frPyObjects([points], height, width))
            ).astype(bool)
            eid = region["meta"]["expression_id"]
            masks[eid] = masks.get(eid, np.zeros_like(mask)) | mask
    assert set(masks) == set(formats_project["expected"])
    for eid, want in formats_project["expected"].items():
        _assert_close(masks[eid], want)


def test_coco_import_as_reviewed_masks(web_client, formats_project, user):
    from server.ris.services import project_create

    source = formats_project["project"]
    polygons = web_client.get(f"/web/projects/{source.pk}/export/coco-polygons/").content
    rles = web_client.get(f"/web/projects/{source.pk}/export/coco.json").content
    for payload, fmt in ((polygons, "polygons"), (rles, "rle")):
        target = project_create(name=f"Imported {fmt}", created_by=user)
        first = image_make(target, user, name="street.png", color=(10, 200, 30), width=40, height=30)
        image_make(target, user, name="park.png", color=(200, 10, 30), width=24, height=20)
        image_make(target, user, name="other.png", color=(1, 2, 3), width=10, height=10)
        response = web_client.post(
            f"/web/projects/{target.pk}/import/coco/", {"file": io.BytesIO(payload)}, format="multipart"
        )
        assert response.status_code == 201, response.content
        assert response.json() == {"imported": 3, "skipped": []}
        imported = {e.text: e for e in Expression.objects.filter(image__project=target)}
        assert set(imported) == {"the middle band", "the dog on the left, near the tree!", "the two dogs"}
        for old_id, want in formats_project["expected"].items():
            text = Expression.objects.get(pk=old_id).text
            review = Review.objects.get(expression=imported[text])
            assert review.decision == "corrected" and review.reviewer == user
            got = mask_utils.decode(
                {"size": review.corrected_rle["size"], "counts": review.corrected_rle["counts"].encode()}
            )
            assert np.array_equal(got.astype(bool), want)
            assert not imported[text].jobs.exists()
        assert imported["the two dogs"].image == first
        if fmt == "polygons":
            assert imported["the two dogs"].category == "dog"


def test_coco_import_errors_in_words(web_client, reviewed_project):
    project = reviewed_project["project"]
    url = f"/web/projects/{project.pk}/import/coco/"
    bad = web_client.post(url, {"file": io.BytesIO(b"not json")}, format="multipart")
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    broken = {
        "images": [{"id": 1, "file_name": "street.png", "width": 40, "height": 30}],
        "annotations": [{"id": 7, "image_id": 1, "segmentation": [[1, 2, 3]], "category_id": 1}],
    }
    response = web_client.post(url, {"file": io.BytesIO(json.dumps(broken).encode())}, format="multipart")
    assert response.status_code == 400 and "annotation 7" in response.json()["error"]
    unknown = web_client.get(f"/web/projects/{project.pk}/export/tiff/")
    assert unknown.status_code == 400 and "coco-polygons" in unknown.json()["error"]
