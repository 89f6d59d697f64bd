"""Exports: COCO JSON read back with pycocotools, and the RefCOCO-style zip read by the benchmark's reader."""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import numpy as np
import pytest
from pycocotools.coco import COCO

from server.web.services.export import coco_export, refer_export_zip
from workers.engine.data.refer_format import sentence_tokens


def _coco_from(data: dict, tmp_path) -> COCO:
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(data))
    return COCO(str(path))


def test_coco_export_masks_read_back_equal(reviewed_project, tmp_path):
    data = coco_export(project=reviewed_project["project"])
    coco = _coco_from(data, tmp_path)
    expected = reviewed_project["expected"]
    assert sorted(coco.getAnnIds()) == sorted(expected)
    for ann_id, mask in expected.items():
        ann = coco.loadAnns(ann_id)[0]
        decoded = coco.annToMask(ann).astype(bool)
        assert decoded.shape == mask.shape
        assert np.array_equal(decoded, mask)
        assert ann["area"] == int(mask.sum())
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [
            float(xs.min()),
            float(ys.min()),
            float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1),
        ]
    by_id = {a["id"]: a for a in data["annotations"]}
    assert by_id[reviewed_project["accepted"].pk]["decision"] == "accepted"
    assert by_id[reviewed_project["corrected"].pk]["decision"] == "corrected"
    assert by_id[reviewed_project["corrected"].pk]["expression"] == "the dog on the left, near the tree!"
    images = {i["id"]: i for i in data["images"]}
    first, second = reviewed_project["images"]
    assert images[first.pk]["file_name"] == "street.png"
    assert (images[second.pk]["width"], images[second.pk]["height"]) == (24, 20)


def test_coco_export_leaves_out_rejected_and_unreviewed(reviewed_project):
    data = coco_export(project=reviewed_project["project"])
    ids = {a["id"] for a in data["annotations"]}
    assert reviewed_project["rejected"].pk not in ids
    assert reviewed_project["unreviewed"].pk not in ids


def test_latest_review_wins(reviewed_project, user):
    from server.ris.services import review_create

    review_create(expression=reviewed_project["accepted"], decision="rejected", reviewer=user)
    ids = {a["id"] for a in coco_export(project=reviewed_project["project"])["annotations"]}
    assert reviewed_project["accepted"].pk not in ids


def test_refer_zip_is_read_by_the_benchmark_reader(reviewed_project, tmp_path):
    from workers.engine.data.refer import ReferDataset, load_refs_pickle

    archive = refer_export_zip(project=reviewed_project["project"], dataset="refcoco", split="val")
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "data")
    assert "refcoco/refs(unc).p" in names and "refcoco/instances.json" in names
    assert not any(name.startswith("/") or ".." in name for name in names)
    refs = load_refs_pickle(tmp_path / "data" / "refcoco" / "refs(unc).p")
    assert {r["ref_id"] for r in refs} == set(reviewed_project["expected"])

    dataset = ReferDataset(tmp_path / "data", "refcoco", "val", text_field="raw")
    groups = dataset.images()
    assert dataset.n_sentences == 2
    texts = {s.text for g in groups for s in g.sentences}
    assert texts == {"the middle band", "the dog on the left, near the tree!"}
    for group in groups:
        rgb, _ = dataset.load_image(group)
        assert rgb.shape == (group.height, group.width, 3)
        for sentence in group.sentences:
            mask = dataset.gt_mask(sentence.ann_id)
            assert np.array_equal(mask, reviewed_project["expected"][sentence.ann_id])
    sent_dataset = ReferDataset(tmp_path / "data", "refcoco", "val")
    assert "the dog on the left near the tree" in {s.text for s in sent_dataset.iter_sentences()}


def test_refer_pickle_is_protocol_2(reviewed_project):
    archive = refer_export_zip(project=reviewed_project["project"], dataset="refcocog", split="test")
    with zipfile.ZipFile(archive) as zf:
        raw = zf.read("refcocog/refs(umd).p")
    assert raw[:2] == b"\x80\x02"
    refs = pickle.loads(raw)
    assert {r["split"] for r in refs} == {"test"}


def test_refer_export_refuses_unknown_split(reviewed_project):
    from server.ris.errors import InvalidInput

    with pytest.raises(InvalidInput, match="has no split 'testA'"):
        refer_export_zip(project=reviewed_project["project"], dataset="refcocog", split="testA")


def test_refer_export_reencodes_rotated_images_upright(user, project, tmp_path):
    """A JPEG with an EXIF rotation is written upright, so its pixels match instances.json."""
    from PIL import Image

    from server.ris.services import expression_create, image_upload, review_create
    from server.ris.services.rle import rle_from_mask
    from tests.web.conftest import job_with_candidates

    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: stored 40x30, shown 30x40
    Image.new("RGB", (40, 30), (50, 60, 70)).save(buffer, format="JPEG", exif=exif.tobytes())
    from django.core.files.uploadedfile import SimpleUploadedFile

    stored, rejected = image_upload(
        project=project, files=[SimpleUploadedFile("rot.jpg", buffer.getvalue())], uploaded_by=user
    )
    assert not rejected
    image = stored[0].image
    assert (image.width, image.height) == (30, 40)
    expression = expression_create(image=image, text="the thing", author=user)
    job_with_candidates(expression)
    mask = np.zeros((40, 30), dtype=bool)
    mask[5:9, 3:20] = True
    review_create(expression=expression, decision="corrected", reviewer=user, rle=rle_from_mask(mask))

    from workers.engine.data.refer import ReferDataset

    with zipfile.ZipFile(refer_export_zip(project=project)) as zf:
        zf.extractall(tmp_path / "d")
    dataset = ReferDataset(tmp_path / "d", "refcoco", "val")
    (group,) = dataset.images()
    assert group.file_name.endswith(".png")
    rgb, _ = dataset.load_image(group)
    assert rgb.shape == (40, 30, 3)


def test_sentence_tokens():
    assert sentence_tokens("The man's hat, LEFT!") == ["the", "man's", "hat", "left"]


def test_export_views_download_for_members_only(reviewed_project, web_client, other_user):
    from django.test import Client

    project = reviewed_project["project"]
    response = web_client.get(f"/web/projects/{project.pk}/export/coco.json")
    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]
    assert len(json.loads(response.content)["annotations"]) == 2

    response = web_client.get(f"/web/projects/{project.pk}/export/refer.zip?dataset=refcoco%2B&split=testB")
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert "refcoco+/refs(unc).p" in zf.namelist()

    bad = web_client.get(f"/web/projects/{project.pk}/export/refer.zip?split=nope")
    assert bad.status_code == 400
    assert "has no split 'nope'" in bad.json()["error"]

    stranger = Client()
    stranger.force_login(other_user)
    assert stranger.get(f"/web/projects/{project.pk}/export/coco.json").status_code == 404
    assert Client().get(f"/web/projects/{project.pk}/export/coco.json").status_code in (401, 403)
