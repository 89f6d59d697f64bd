"""RLE helpers and the Proposals container, on constructed masks with hand-known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workers.engine.blocks.masks import (
    Proposals,
    bbox_xyxy_from_masks,
    decode_rle,
    decode_rle_one,
    encode_rle,
    encode_rle_one,
    intersection_matrix,
    mask_iou,
    normalize_rle,
    rle_area,
    rle_bbox_xyxy,
)
from workers.engine.core.errors import BadInputError


def boxes_mask(h: int, w: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """N x H x W bool, mask i = the xyxy box i (exclusive ends)."""
    masks = np.zeros((len(boxes), h, w), dtype=bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    return masks


def test_encode_decode_round_trip_numpy_and_torch() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((5, 37, 53)) > 0.6
    rles = encode_rle(masks)
    assert len(rles) == 5
    assert all(isinstance(r["counts"], str) and r["size"] == [37, 53] for r in rles)
    json.dumps(rles)  # JSON-ready
    assert np.array_equal(decode_rle(rles), masks)
    assert np.array_equal(decode_rle(encode_rle(torch.from_numpy(masks))), masks)
    assert np.array_equal(decode_rle_one(encode_rle_one(masks[2])), masks[2])


def test_empty_batches() -> None:
    assert encode_rle(np.zeros((0, 4, 6), dtype=bool)) == []
    assert decode_rle([], size=(4, 6)).shape == (0, 4, 6)
    with pytest.raises(BadInputError, match="size"):
        decode_rle([])


def test_area_bbox_and_iou_by_hand() -> None:
    masks = boxes_mask(20, 30, [(0, 0, 10, 10), (5, 5, 15, 15), (20, 10, 30, 20)])
    masks = np.concatenate([masks, np.zeros((1, 20, 30), dtype=bool)])  # an empty mask
    rles = encode_rle(masks)
    assert rle_area(rles).tolist() == [100, 100, 100, 0]
    expected_boxes = [[0, 0, 10, 10], [5, 5, 15, 15], [20, 10, 30, 20], [0, 0, 0, 0]]
    assert rle_bbox_xyxy(rles).tolist() == expected_boxes
    assert bbox_xyxy_from_masks(masks).tolist() == expected_boxes
    inter = intersection_matrix(rles, rles)
    assert inter[0, 1] == 25 and inter[1, 0] == 25 and inter[0, 2] == 0 and inter[0, 0] == 100
    iou = mask_iou(rles[:3], rles[:3])
    assert iou[0, 1] == pytest.approx(25 / 175)
    assert iou[0, 0] == pytest.approx(1.0)
    assert iou[0, 2] == 0.0


def test_normalize_rle_accepts_bytes_and_uncompressed_and_refuses_bad() -> None:
    mask = boxes_mask(4, 5, [(1, 1, 3, 4)])[0]
    rle = encode_rle_one(mask)
    as_bytes = {"size": rle["size"], "counts": rle["counts"].encode()}
    assert normalize_rle(as_bytes) == rle
    # Uncompressed RLE: column-major runs starting with zeros.
    column_major = mask.flatten(order="F")
    runs, current, count = [], False, 0
    for value in column_major:
        if value != current:
            runs.append(count)
            current, count = value, 0
        count += 1
    runs.append(count)
    assert normalize_rle({"size": [4, 5], "counts": runs}) == rle
    with pytest.raises(BadInputError, match="sum to"):
        normalize_rle({"size": [4, 5], "counts": [3, 4]})
    with pytest.raises(BadInputError, match="size"):
        normalize_rle({"counts": "abc"})


def test_proposals_filter_cat_to_tensor_and_state() -> None:
    masks = boxes_mask(16, 16, [(0, 0, 4, 4), (0, 0, 8, 8), (8, 8, 16, 16)])
    p = Proposals.from_masks(masks, predicted_iou=[0.9, 0.8, 0.7], stability_score=[0.5, 0.6, 0.7])
    assert len(p) == 3
    assert p.area.tolist() == [16, 64, 64]
    assert p.bbox_xyxy.tolist()[2] == [8, 8, 16, 16]
    kept = p.filter(np.array([True, False, True]))
    assert len(kept) == 2 and kept.predicted_iou.tolist() == [0.9, 0.7]
    reordered = p.filter([2, 0])
    assert reordered.area.tolist() == [64, 16]
    assert torch.equal(reordered.to_tensor(), torch.from_numpy(masks[[2, 0]]))
    both = Proposals.cat([kept, reordered])
    assert len(both) == 4 and both.stability_score.tolist() == [0.5, 0.7, 0.7, 0.5]
    restored = Proposals.from_state(json.loads(json.dumps(p.to_state())))
    assert restored.rles == p.rles and np.array_equal(restored.area, p.area)
    assert np.array_equal(restored.predicted_iou, p.predicted_iou)
    no_scores = Proposals.from_masks(masks)
    assert np.isnan(no_scores.predicted_iou).all()
    assert np.isnan(Proposals.from_state(no_scores.to_state()).stability_score).all()
    assert len(Proposals.empty((16, 16)).to_numpy()) == 0


def test_proposals_refuse_mixed_sizes_and_bad_keep() -> None:
    a = Proposals.from_masks(np.ones((1, 4, 4), dtype=bool))
    b = Proposals.from_masks(np.ones((1, 5, 4), dtype=bool))
    with pytest.raises(BadInputError, match="different image sizes"):
        Proposals.cat([a, b])
    with pytest.raises(BadInputError, match="out of range"):
        a.filter([3])
    with pytest.raises(BadInputError, match="bool keep mask"):
        a.filter(np.array([True, False]))
    with pytest.raises(BadInputError, match="N x H x W"):
        encode_rle(np.ones((4, 4), dtype=bool))
