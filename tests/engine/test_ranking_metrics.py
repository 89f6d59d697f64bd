"""Hit@k, oracle IoU@k and the proposal ceiling against values computed by hand (docs/METHODS.md#metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from workers.engine.core.types import Candidate
from workers.engine.data.benchmark.runner import candidate_ious
from workers.engine.data.metrics import HIT_KS, best_iou_at, ranking_summary


def test_best_iou_at_takes_the_best_of_the_head_and_zero_for_nothing() -> None:
    assert best_iou_at([0.1, 0.7, 0.3], 1) == 0.1
    assert best_iou_at([0.1, 0.7, 0.3], 2) == 0.7
    assert best_iou_at([0.1, 0.7, 0.3], 10) == 0.7
    assert best_iou_at([], 3) == 0.0
    with pytest.raises(ValueError, match="k must be at least 1"):
        best_iou_at([0.5], 0)


def test_ranking_summary_matches_hand_computed_values() -> None:
    # Four sentences, IoUs of their candidates in rank order, and each one's best over all candidates.
    ranked = [
        [0.9, 0.1],  # hit at 1
        [0.2, 0.4, 0.6, 0.0, 0.0, 0.8],  # first > 0.5 at rank 3; 0.8 at rank 6
        [0.5, 0.5, 0.5],  # exactly 0.5 never counts (strict, as Prec@0.5)
        [],  # no candidate
    ]
    ceilings = [0.9, 0.95, 0.5, None]  # sentence 2 has a better mask below rank 10 (0.95)
    s = ranking_summary(ranked, ceilings)
    assert s["hit@1"] == pytest.approx(25.0)  # 1 of 4
    assert s["hit@3"] == pytest.approx(50.0)  # sentences 1, 2
    assert s["hit@5"] == pytest.approx(50.0)
    assert s["hit@10"] == pytest.approx(50.0)
    assert s["oracle_iou@1"] == pytest.approx(100 * (0.9 + 0.2 + 0.5 + 0.0) / 4)  # 40.0
    assert s["oracle_iou@3"] == pytest.approx(100 * (0.9 + 0.6 + 0.5 + 0.0) / 4)  # 50.0
    assert s["oracle_iou@5"] == pytest.approx(50.0)
    assert s["oracle_iou@10"] == pytest.approx(100 * (0.9 + 0.8 + 0.5 + 0.0) / 4)  # 55.0
    assert s["ceiling_iou"] == pytest.approx(100 * (0.9 + 0.95 + 0.5 + 0.0) / 4)  # 58.75
    assert s["ceiling_hit"] == pytest.approx(50.0)
    assert set(s) == {f"hit@{k}" for k in HIT_KS} | {f"oracle_iou@{k}" for k in HIT_KS} | {
        "ceiling_iou",
        "ceiling_hit",
    }


def test_ranking_summary_of_nothing_and_bad_input() -> None:
    assert all(v == 0.0 for v in ranking_summary([], []).values())
    with pytest.raises(ValueError, match="2 ranked IoU lists for 1 ceilings"):
        ranking_summary([[0.1], [0.2]], [0.1])
    with pytest.raises(ValueError, match="outside"):
        ranking_summary([[1.5]], [1.5])


def _candidate(mask: np.ndarray, rank: int) -> Candidate:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return Candidate(rank, rle, (0.0, 0.0, 1.0, 1.0), int(mask.sum()), 1.0, {})


def test_candidate_ious_are_the_pixel_ious_in_candidate_order() -> None:
    gt = np.zeros((4, 5), dtype=bool)
    gt[0:2, 0:3] = True  # 6 px
    a = np.zeros_like(gt)
    a[1:3, 1:4] = True  # 6 px, 2 shared -> 2 / 10
    b = gt.copy()  # exact -> 1
    c = np.zeros_like(gt)  # empty -> 0
    ious = candidate_ious([_candidate(a, 0), _candidate(b, 1), _candidate(c, 2)], gt)
    assert ious.tolist() == pytest.approx([0.2, 1.0, 0.0])
    assert candidate_ious([], gt).shape == (0,)
    with pytest.raises(ValueError, match="candidate mask is 3x2 but its image is 5x4"):
        candidate_ious([_candidate(np.zeros((2, 3), bool), 0)], gt)
