"""Metrics against values computed by hand (docs/METHODS.md#metrics: oIoU, mIoU with I/U = 0 when U = 0, strict Prec@X)."""

from __future__ import annotations

import numpy as np
import pytest

from workers.engine.data.metrics import SentenceScore, intersection_union, iou_histogram, summarize


def test_intersection_union_counts_pixels() -> None:
    gt = np.zeros((4, 5), dtype=bool)
    gt[0:2, 0:3] = True  # 6 pixels
    pred = np.zeros((4, 5), dtype=bool)
    pred[1:3, 1:4] = True  # 6 pixels, 2 shared
    score = intersection_union(pred, gt)
    assert (score.intersection, score.union) == (2, 10)
    assert score.iou == pytest.approx(0.2)


def test_empty_prediction_and_no_prediction_score_zero_with_gt_area_as_union() -> None:
    gt = np.zeros((3, 3), dtype=bool)
    gt[1, :] = True
    assert intersection_union(None, gt) == SentenceScore(0, 3)
    assert intersection_union(np.zeros((3, 3), dtype=bool), gt) == SentenceScore(0, 3)


def test_union_zero_gives_iou_zero() -> None:
    empty = np.zeros((2, 2), dtype=bool)
    score = intersection_union(empty, empty)
    assert (score.intersection, score.union, score.iou) == (0, 0, 0.0)


def test_shape_mismatch_is_an_error_in_words() -> None:
    with pytest.raises(ValueError, match="2x3 but ground truth is 3x2"):
        intersection_union(np.zeros((2, 3), bool), np.zeros((3, 2), bool))


def test_summary_matches_hand_computed_values() -> None:
    # IoUs: 0.75, 0 (empty prediction), 0 (U = 0), exactly 0.5, exactly 0.9
    pairs = [(3, 4), (0, 5), (0, 0), (5, 10), (9, 10)]
    result = summarize(pairs)
    assert result["n"] == 5
    assert result["oiou"] == pytest.approx(100 * 17 / 29)  # 58.62...
    assert result["miou"] == pytest.approx(100 * (0.75 + 0.5 + 0.9) / 5)  # 43.0
    # strict >: 0.5 is not above 0.5 and 0.9 is not above 0.9
    assert result["prec@0.5"] == pytest.approx(40.0)
    assert result["prec@0.6"] == pytest.approx(40.0)
    assert result["prec@0.7"] == pytest.approx(40.0)
    assert result["prec@0.8"] == pytest.approx(20.0)
    assert result["prec@0.9"] == pytest.approx(0.0)


def test_summary_accepts_sentence_scores_and_differs_between_oiou_and_miou() -> None:
    # a big object found well and a small one missed: oIoU rewards the big one, mIoU weighs both alike
    result = summarize([SentenceScore(90, 100), SentenceScore(0, 10)])
    assert result["oiou"] == pytest.approx(100 * 90 / 110)
    assert result["miou"] == pytest.approx(45.0)


def test_summary_of_nothing_and_of_all_zero_unions() -> None:
    assert summarize([])["oiou"] == 0.0 and summarize([])["miou"] == 0.0
    result = summarize([(0, 0), (0, 0)])
    assert (result["oiou"], result["miou"], result["prec@0.5"]) == (0.0, 0.0, 0.0)


def test_summary_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="I=5, U=3"):
        summarize([(5, 3)])


def test_iou_histogram_bins() -> None:
    assert iou_histogram([0.0, 0.05, 0.1, 0.55, 0.99, 1.0], bins=10) == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]
