"""Malformed data sets get a clear answer before pycocotools sees them (issue 15, kinds 1-5).

Each test feeds one kind of bad input from the issue through the REFER reader and checks the answer: an error
naming the file, the annotation and the problem, or the correct reading. None of them reaches native code
with a value that could crash it (NaN and 2e8 vertices crashed or ran away in pycocotools before).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from workers.engine.data.check import check_dataset
from workers.engine.data.imaging import decode_rgb
from workers.engine.data.refer import DatasetError, ReferDataset, gt_mask_from_segmentation, load_refs_pickle
from workers.engine.data.refer_format import dump_python2_pickle
from workers.engine.data.synthetic import write_synthetic_refcoco
from workers.engine.data.validate import SegmentationError, clean_segmentation, compressed_rle_counts


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("valid_refer")
    write_synthetic_refcoco(path, 3, seed=1)
    return path


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "data"
    shutil.copytree(pristine, dest)
    return dest


def _instances(root: Path) -> dict:
    return json.loads((root / "refcoco" / "instances.json").read_text())


def _write_instances(root: Path, data: dict) -> None:
    (root / "refcoco" / "instances.json").write_text(json.dumps(data))


def _break(root: Path, index: int, segmentation: object) -> tuple[int, int, int]:
    """Replace annotation ``index``'s segmentation; its id and its image's (height, width)."""
    data = _instances(root)
    ann = data["annotations"][index]
    ann["segmentation"] = segmentation
    _write_instances(root, data)
    image = next(i for i in data["images"] if i["id"] == ann["image_id"])
    return ann["id"], image["height"], image["width"]


def _dataset(root: Path) -> ReferDataset:
    return ReferDataset(root, "refcoco", "val")


# -- kind 1: NaN, astronomically large, far-off polygons -------------------------------------------------
@pytest.mark.parametrize(
    ("polygon", "words"),
    [
        ([10.0, 10.0, float("nan"), 20.0, 30.0, 30.0], "finite number"),
        ([10.0, 10.0, 2e8, 20.0, 30.0, 2e8], "rejected (not clipped)"),
        ([-1e12, -1e12, 1e12, -1e12, 1e12, 1e12, -1e12, 1e12], "rejected (not clipped)"),
        ([10.0, 10.0, 20.0, 20.0], "a polygon needs at least 3"),
        ([10.0, 10.0, 20.0, 20.0, 30.0], "come in pairs"),
        ([10.0, "x", 20.0, 20.0, 30.0, 30.0], "finite number"),
    ],
)
def test_bad_polygons_are_refused_naming_file_and_annotation(root: Path, polygon: list, words: str) -> None:
    ann_id, _, _ = _break(root, 0, [polygon])
    dataset = _dataset(root)
    with pytest.raises(DatasetError) as caught:
        dataset.gt_mask(ann_id)
    message = str(caught.value)
    assert words in message and f"annotation {ann_id}" in message and "instances.json" in message


def test_vertices_just_outside_the_image_are_clipped_by_the_rasteriser() -> None:
    # a square from -5 to 15 on a 10 x 10 image: within the margin, so kept, and the image is covered
    mask = gt_mask_from_segmentation([[-5, -5, 15, -5, 15, 15, -5, 15]], 10, 10)
    assert mask.shape == (10, 10) and mask.all()


# -- kind 2: flat polygons -----------------------------------------------------------------------------
def test_a_flat_polygon_is_read_as_one_part() -> None:
    flat = [2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0]
    assert np.array_equal(gt_mask_from_segmentation(flat, 10, 10), gt_mask_from_segmentation([flat], 10, 10))
    assert gt_mask_from_segmentation(flat, 10, 10).sum() > 20


def test_a_flat_polygon_in_a_data_set_reads(root: Path) -> None:
    data = _instances(root)
    ann = data["annotations"][0]
    ann["segmentation"] = ann["segmentation"][:1]
    _write_instances(root, data)
    nested = _dataset(root).gt_mask(ann["id"])
    ann["segmentation"] = list(ann["segmentation"][0])  # [x, y, x, y, ...] without the outer brackets
    _write_instances(root, data)
    flat = _dataset(root).gt_mask(ann["id"])
    assert nested.any() and np.array_equal(flat, nested)


# -- kind 3: RLE size and counts -----------------------------------------------------------------------
def test_rle_whose_size_differs_from_its_image_is_refused(root: Path) -> None:
    data = _instances(root)
    ann, image = data["annotations"][0], data["images"][0]
    ann["image_id"] = image["id"]
    h, w = image["height"], image["width"]
    wrong = mask_utils.encode(np.asfortranarray(np.ones((h - 1, w), dtype=np.uint8)))
    ann["segmentation"] = {"size": [h - 1, w], "counts": wrong["counts"].decode("ascii")}
    _write_instances(root, data)
    with pytest.raises(DatasetError) as caught:
        _dataset(root).gt_mask(ann["id"])
    message = str(caught.value)
    assert f"annotation {ann['id']}" in message and f"{w}x{h - 1}" in message and f"{w}x{h}" in message


def test_rle_counts_written_as_a_bytes_literal_read_as_those_bytes() -> None:
    mask = np.zeros((6, 5), dtype=np.uint8)
    mask[1:4, 2:5] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    literal = {"size": [6, 5], "counts": str(rle["counts"])}  # "b'...'", as str(bytes) writes it
    assert literal["counts"].startswith("b'")
    assert np.array_equal(gt_mask_from_segmentation(literal, 6, 5), mask.astype(bool))


@pytest.mark.parametrize(
    ("counts", "words"),
    [
        ("b'\\x01\\x02'", "outside COCO's alphabet"),
        ("0000", "cover 0 pixels"),
        ([1, 2, 3], "cover 6 pixels"),
        ([-1, 31], "non-negative"),
        ("Z", "end in the middle of a run"),
        (12, "expected a list or a string"),
    ],
)
def test_malformed_rle_counts_are_refused_in_words(counts: object, words: str) -> None:
    with pytest.raises(SegmentationError, match=words.replace("(", r"\(")):
        clean_segmentation({"size": [6, 5], "counts": counts}, 6, 5)


def test_compressed_counts_decode_like_pycocotools() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        mask = np.asfortranarray(rng.random((h, w)) > rng.random())
        runs = compressed_rle_counts(mask_utils.encode(mask)["counts"])
        assert sum(runs) == h * w
        rebuilt = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)
        assert np.array_equal(rebuilt, mask.ravel(order="F"))


# -- kind 4: images decoded as uploads are -------------------------------------------------------------
def test_a_16_bit_png_in_the_image_folder_is_read_like_an_upload(root: Path) -> None:
    dataset = _dataset(root)
    group = dataset.images()[0]
    grey = np.full((group.height, group.width), 20_000, dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode.startswith("I")
    dataset.image_path(group).write_bytes(buffer.getvalue())
    rgb, _ = dataset.load_image(group)
    assert rgb.shape == (group.height, group.width, 3)
    assert int(rgb[0, 0, 0]) == round(20_000 / 257)  # not all white
    assert np.array_equal(rgb, decode_rgb(buffer.getvalue()))


def test_an_undecodable_image_names_its_file(root: Path) -> None:
    dataset = _dataset(root)
    group = dataset.images()[0]
    dataset.image_path(group).write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DatasetError, match=f"cannot decode image {dataset.image_path(group)}"):
        dataset.load_image(group)


# -- kind 5: Python 2 pickles decoded string by string -------------------------------------------------
def test_python2_pickle_strings_are_decoded_one_by_one(tmp_path: Path) -> None:
    utf8 = "the café table on the left".encode().decode("latin1")  # the UTF-8 bytes, as Python 2 kept them
    refs = [
        {
            "ref_id": 1,
            "ann_id": 2,
            "image_id": 3,
            "split": "val",
            "sentences": [
                {"sent_id": 7, "raw": utf8, "sent": utf8, "tokens": ["café".encode().decode("latin1")]},
                {"sent_id": 8, "raw": "caf\xe9 chair", "sent": "caf\xe9 chair", "tokens": []},
            ],
        }
    ]
    for protocol in (0, 2):
        path = tmp_path / f"refs{protocol}.p"
        path.write_bytes(dump_python2_pickle(refs, protocol=protocol))
        loaded = load_refs_pickle(path)
        first, second = loaded[0]["sentences"]
        assert first["sent"] == "the café table on the left" and first["tokens"] == ["café"]
        assert second["sent"] == "café chair"  # not UTF-8: latin-1 for this string only
        assert loaded[0]["split"] == "val" and loaded[0]["ref_id"] == 1


# -- --check: every problem at once --------------------------------------------------------------------
def test_check_of_a_clean_data_set_finds_nothing(pristine: Path) -> None:
    report = check_dataset(pristine, "refcoco")
    assert report.ok, report.problems
    assert report.n_sentences > 0 and report.n_images == 3


def test_check_reports_every_problem_of_a_broken_data_set(root: Path) -> None:
    data = _instances(root)
    anns = data["annotations"]
    anns[0]["segmentation"] = [[1.0, 2.0, float("nan"), 4.0, 5.0, 6.0]]
    anns[1]["segmentation"] = [[0.0, 0.0, 2e8, 0.0, 2e8, 2e8]]
    image = next(i for i in data["images"] if i["id"] == anns[2]["image_id"])
    anns[2]["segmentation"] = {"size": [image["height"] - 1, image["width"]], "counts": "0"}
    anns[3]["segmentation"] = [[1.0, 1.0, 2.0, 2.0]]
    _write_instances(root, data)
    (root / "images" / "train2014" / data["images"][1]["file_name"]).write_bytes(b"garbage")
    (root / "images" / "train2014" / data["images"][2]["file_name"]).unlink()
    report = check_dataset(root, "refcoco")
    text = "\n".join(str(p) for p in report.problems)
    assert f"annotation {anns[0]['id']}: polygon part 0 holds nan" in text
    assert f"annotation {anns[1]['id']}: polygon part 0 reaches x" in text
    assert f"annotation {anns[2]['id']}: the RLE is" in text
    assert f"annotation {anns[3]['id']}: polygon part 0 has 2 point(s)" in text
    assert "cannot decode image" in text and data["images"][1]["file_name"] in text
    assert "missing from the image folder" in text and data["images"][2]["file_name"] in text
    assert len(report.problems) >= 6
