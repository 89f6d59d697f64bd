"""The REFER reader on synthetic data in the exact REFER layout, the ground-truth convention, and its errors."""

from __future__ import annotations

import json
import pickle
import pickletools
import shutil
from pathlib import Path

import numpy as np
import pytest

from workers.engine.data.refer import (
    DatasetError,
    MissingImageError,
    ReferDataset,
    gt_mask_from_segmentation,
    load_refs_pickle,
)
from workers.engine.data.refer_format import dump_python2_pickle
from workers.engine.data.synthetic import COLOURS, SHAPES, write_synthetic_refcoco


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("refer")
    write_synthetic_refcoco(path, 3, seed=0)
    return path


@pytest.fixture
def copy_of(root: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "data"
    shutil.copytree(root, dest)
    return dest


def test_layout_is_the_refer_layout(root: Path) -> None:
    for rel in [
        "refcoco/refs(unc).p",
        "refcoco+/refs(unc).p",
        "refcocog/refs(umd).p",
        "refcocog/refs(google).p",
    ]:
        assert (root / rel).is_file(), rel
    for folder in ["refcoco", "refcoco+", "refcocog"]:
        assert (root / folder / "instances.json").is_file()
    images = sorted((root / "images" / "train2014").iterdir())
    assert [p.name for p in images] == [f"COCO_train2014_{1000 + i:012d}.jpg" for i in range(3)]
    assert images[0].read_bytes()[:2] == b"\xff\xd8"  # JPEG


def test_synthetic_refs_are_python2_protocol2_pickles(root: Path) -> None:
    data = (root / "refcoco" / "refs(unc).p").read_bytes()
    assert data[:2] == b"\x80\x02"
    opcodes = {op.name for op, _, _ in pickletools.genops(data)}
    assert "SHORT_BINSTRING" in opcodes  # Python 2 byte strings, not Python 3 unicode
    assert "BINUNICODE" not in opcodes
    refs = load_refs_pickle(root / "refcoco" / "refs(unc).p")
    assert {"ref_id", "ann_id", "image_id", "split", "sentences", "category_id"} <= set(refs[0])
    assert {"sent_id", "raw", "sent", "tokens"} <= set(refs[0]["sentences"][0])
    assert isinstance(refs[0]["sentences"][0]["sent"], str)


@pytest.mark.parametrize("protocol", [0, 2])
def test_python2_pickle_with_latin1_bytes_reads_with_the_fallback(tmp_path: Path, protocol: int) -> None:
    refs = [
        {
            "ref_id": 1,
            "ann_id": 2,
            "image_id": 3,
            "split": "val",
            "sentences": [
                {
                    "sent_id": 7,
                    "raw": "Caf\xe9 chair.",
                    "sent": "caf\xe9 chair",
                    "tokens": ["caf\xe9", "chair"],
                }
            ],
        }
    ]
    path = tmp_path / "refs(unc).p"
    path.write_bytes(dump_python2_pickle(refs, protocol=protocol))
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(path.read_bytes())  # plain pickle.load fails: the fallback is needed
    loaded = load_refs_pickle(path)
    assert loaded[0]["sentences"][0]["sent"] == "café chair"
    assert loaded[0]["image_id"] == 3


def test_python3_pickles_of_any_protocol_read(tmp_path: Path) -> None:
    refs = [{"ref_id": 1, "ann_id": 2, "image_id": 3, "split": "val", "sentences": []}]
    for protocol in (1, 2, 4):
        path = tmp_path / f"p{protocol}.p"
        path.write_bytes(pickle.dumps(refs, protocol=protocol))
        assert load_refs_pickle(path) == refs


def test_every_dataset_and_split_reads_grouped_by_image(root: Path) -> None:
    cases = {
        ("refcoco", "unc"): ["val", "testA", "testB"],
        ("refcoco+", "unc"): ["val", "testA", "testB"],
        ("refcocog", "umd"): ["val", "test"],
        ("refcocog", "google"): ["val"],
    }
    for (dataset, split_by), splits in cases.items():
        total = 0
        for split in splits + ["train"]:
            ds = ReferDataset(root, dataset, split, split_by=split_by)
            groups = ds.images()
            assert groups, (dataset, split)
            assert [g.image_id for g in groups] == sorted(g.image_id for g in groups)
            for g in groups:
                assert all(s.image_id == g.image_id for s in g.sentences)
                assert [(s.ref_id, s.sent_id) for s in g.sentences] == sorted(
                    (s.ref_id, s.sent_id) for s in g.sentences
                )
            # several sentences per ref
            per_ref: dict[int, int] = {}
            for s in ds.iter_sentences():
                per_ref[s.ref_id] = per_ref.get(s.ref_id, 0) + 1
            assert min(per_ref.values()) >= 2
            total += ds.n_sentences
        refs = load_refs_pickle(root / dataset / f"refs({split_by}).p")
        assert total == sum(len(r["sentences"]) for r in refs)  # splits partition the sentences


def test_refcoco_plus_sentences_have_no_location_words(root: Path) -> None:
    words = {w for s in ReferDataset(root, "refcoco+", "val").iter_sentences() for w in s.text.split()}
    assert not words & {"left", "right", "top", "bottom", "middle"}


def test_limit_and_image_ids(root: Path) -> None:
    ds = ReferDataset(root, "refcoco", "val")
    everything = list(ds.iter_sentences())
    first = ds.images(limit=4)
    assert [s.sent_id for g in first for s in g.sentences] == [s.sent_id for s in everything[:4]]
    one = ds.images(image_ids=[everything[-1].image_id])
    assert [g.image_id for g in one] == [everything[-1].image_id]
    assert ds.images(limit=4, image_ids=[first[-1].image_id])[0].sentences == first[-1].sentences


def test_gt_convention_overlapping_parts_are_background() -> None:
    a = [0, 0, 4, 0, 4, 4, 0, 4]
    b = [2, 2, 6, 2, 6, 6, 2, 6]
    conventional = gt_mask_from_segmentation([a, b], 8, 8)
    union = gt_mask_from_segmentation([a, b], 8, 8, union=True)
    single_a = gt_mask_from_segmentation([a], 8, 8)
    single_b = gt_mask_from_segmentation([b], 8, 8)
    overlap = single_a & single_b
    assert overlap.sum() > 0
    assert np.array_equal(union, single_a | single_b)
    assert np.array_equal(conventional, (single_a ^ single_b))
    assert not conventional[overlap].any() and union[overlap].all()


def test_rle_segmentation_is_read() -> None:
    from pycocotools import mask as mask_utils

    m = np.zeros((5, 6), np.uint8)
    m[1:3, 2:5] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    as_str = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    assert np.array_equal(gt_mask_from_segmentation(as_str, 5, 6), m.astype(bool))


def test_gt_masks_and_images_of_the_synthetic_set(root: Path) -> None:
    instances = json.loads((root / "refcoco" / "instances.json").read_text())
    crosses = [a for a in instances["annotations"] if a["category_id"] == SHAPES["cross"]]
    pairs = [a for a in instances["annotations"] if a["category_id"] == SHAPES["pair"]]
    assert crosses and pairs
    assert all(len(a["segmentation"]) == 2 for a in crosses + pairs)  # multi-part polygons
    plain = ReferDataset(root, "refcoco", "train")
    union = ReferDataset(root, "refcoco", "train", gt_union=True)
    for ann in crosses:
        assert plain.gt_mask(ann["id"]).sum() < union.gt_mask(ann["id"]).sum()  # the overlap differs
    for ann in pairs:
        assert np.array_equal(plain.gt_mask(ann["id"]), union.gt_mask(ann["id"]))  # disjoint parts agree
    # known answers: the painted colour is exactly the union of the parts (JPEG noise aside)
    cats = {c["id"]: c["name"] for c in instances["categories"]}
    assert set(cats.values()) == set(SHAPES)
    colour_of = {
        r["ann_id"]: r["sentences"][0]["sent"].split()[0]
        for r in load_refs_pickle(root / "refcoco" / "refs(unc).p")
    }
    assert set(colour_of.values()) <= set(COLOURS)
    for group in plain.images():
        rgb, _ = plain.load_image(group)
        assert rgb.shape == (group.height, group.width, 3)
        for ann in (a for a in instances["annotations"] if a["image_id"] == group.image_id):
            gt = union.gt_mask(ann["id"])
            close = (np.abs(rgb.astype(int) - np.array(COLOURS[colour_of[ann["id"]]])) <= 60).all(axis=2)
            assert (close & gt).sum() / (close | gt).sum() > 0.97


# ---------------------------------------------------------------------------------------------------- errors


def test_unknown_split_lists_the_splits_the_dataset_has(root: Path) -> None:
    with pytest.raises(
        DatasetError, match=r"refcocog \(umd\) has no split 'testA'; its splits are: train, val, test"
    ):
        ReferDataset(root, "refcocog", "testA")
    with pytest.raises(DatasetError, match="has no split 'test'; its splits are: train, val, testA, testB"):
        ReferDataset(root, "refcoco", "test")
    with pytest.raises(DatasetError, match="refcoco\\+ has no 'umd' split-by; it has: unc"):
        ReferDataset(root, "refcoco+", "val", split_by="umd")
    with pytest.raises(DatasetError, match="unknown dataset 'refclef'"):
        ReferDataset(root, "refclef", "val")


def test_missing_files_are_named(copy_of: Path) -> None:
    (copy_of / "refcocog" / "refs(google).p").unlink()
    with pytest.raises(DatasetError, match=r"refs file not found: .*refcocog/refs\(google\)\.p"):
        ReferDataset(copy_of, "refcocog", "val", split_by="google")
    (copy_of / "refcoco" / "instances.json").unlink()
    with pytest.raises(DatasetError, match=r"instances file not found: .*refcoco/instances\.json"):
        ReferDataset(copy_of, "refcoco", "val")
    with pytest.raises(DatasetError, match="data root not found"):
        ReferDataset(copy_of / "nowhere", "refcoco", "val")


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a pickle",
        b"\x80\x02]q\x00(}q\x01",
        b"",
        pickle.dumps({"not": "a list"}, protocol=2),
        pickle.dumps([{"ref_id": 1}], protocol=2),
    ],
    ids=["garbage", "truncated", "empty", "not-a-list", "not-a-ref"],
)
def test_corrupt_pickle_is_named(copy_of: Path, content: bytes) -> None:
    (copy_of / "refcoco" / "refs(unc).p").write_bytes(content)
    with pytest.raises(DatasetError, match=r"corrupt refs pickle .*refcoco/refs\(unc\)\.p"):
        ReferDataset(copy_of, "refcoco", "val")


def test_pickle_that_names_a_class_is_refused_not_run(tmp_path: Path) -> None:
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([Path("/x")], protocol=2))
    with pytest.raises(DatasetError, match="refers to pathlib"):
        load_refs_pickle(path)


def test_corrupt_instances_is_named(copy_of: Path) -> None:
    (copy_of / "refcoco" / "instances.json").write_text("{ not json")
    with pytest.raises(DatasetError, match="corrupt instances file"):
        ReferDataset(copy_of, "refcoco", "val")


def test_missing_image_is_named(copy_of: Path) -> None:
    ds = ReferDataset(copy_of, "refcoco", "val")
    group = ds.images()[0]
    path = ds.image_path(group)
    path.unlink()
    with pytest.raises(
        MissingImageError, match=f"image {group.image_id} is missing from the image folder: {path}"
    ):
        ds.load_image(group)


def test_image_of_the_wrong_size_is_named(copy_of: Path) -> None:
    from PIL import Image

    ds = ReferDataset(copy_of, "refcoco", "val")
    group = ds.images()[0]
    Image.new("RGB", (10, 10)).save(ds.image_path(group))
    with pytest.raises(DatasetError, match="is 10x10 but .*instances.json says 128x96"):
        ds.load_image(group)


def test_refer_layout_image_folder_is_found(copy_of: Path) -> None:
    target = copy_of / "images" / "mscoco" / "images"
    target.mkdir(parents=True)
    shutil.move(copy_of / "images" / "train2014", target / "train2014")
    ds = ReferDataset(copy_of, "refcoco", "val")
    assert ds.image_dir == target / "train2014"
    ds.load_image(ds.images()[0])
