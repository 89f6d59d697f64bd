"""TAS's spatial rectifier on constructed masks: quadrants, whole-word matching and the public code's quirks."""

from __future__ import annotations

import numpy as np
import pytest

from workers.engine.methods.tas.spatial import (
    BOTTOM_LEFT,
    BOTTOM_RIGHT,
    TOP_LEFT,
    TOP_RIGHT,
    find_directions,
    mask_centroids,
    quadrants,
    rectify,
)
from workers.engine.methods.tas.vocabulary import DEFAULT_VOCABULARY, TAS_CODE_VOCABULARY, check_vocabulary

H, W = 80, 80


def _square(top: int, left: int, size: int = 16) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray]:
    """Six masks: two in the top-left, one in each other quadrant, one more in the bottom-right.

    Scores make the top-left mask 0 the overall best, so any other choice is the rectifier's doing.
    """
    masks = np.stack(
        [
            _square(2, 2),  # 0 top-left, best overall
            _square(4, 20),  # 1 top-left
            _square(2, 60),  # 2 top-right
            _square(60, 2),  # 3 bottom-left
            _square(60, 60),  # 4 bottom-right
            _square(44, 44),  # 5 bottom-right
        ]
    )
    scores = np.array([0.40, 0.05, 0.20, 0.10, 0.15, 0.10])
    return masks, scores


def _choose(sentence: str, masks: np.ndarray, scores: np.ndarray, **kwargs) -> tuple[int, bool]:
    query = find_directions(sentence, kwargs.pop("vocabulary", DEFAULT_VOCABULARY), **kwargs)
    result = rectify(scores, mask_centroids(masks), query, int(np.argmax(scores)))
    return result.index, result.fired


def test_centroids_and_quadrants(scene):
    masks, _ = scene
    centroids = mask_centroids(masks)
    assert centroids[0].tolist() == [9, 9]  # mean of rows 2..17 truncated: (2 + 17) / 2 = 9.5 -> 9
    assert quadrants(centroids).tolist() == [
        TOP_LEFT,
        TOP_LEFT,
        TOP_RIGHT,
        BOTTOM_LEFT,
        BOTTOM_RIGHT,
        BOTTOM_RIGHT,
    ]


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("the thing on the left", 0),  # best of the left half: top-left 0 (0.40) beats bottom-left 3
        ("top right box", 2),
        ("bottom", 4),  # best of the bottom half: bottom-right 4 (0.15) beats bottom-left 3 (0.10)
        ("box at the bottom left", 3),
        ("right one", 2),  # best of the right half: top-right 2 (0.20) beats 4 (0.15)
        ("upper right", 2),
        ("lower left corner", 3),
    ],
)
def test_rectifier_picks_the_named_quadrant(scene, sentence, expected):
    masks, scores = scene
    index, fired = _choose(sentence, masks, scores)
    assert fired
    assert index == expected


def test_no_direction_keeps_the_best(scene):
    masks, scores = scene
    assert _choose("the red one", masks, scores) == (0, False)


def test_bright_does_not_fire_right_but_does_in_peer_substring_mode(scene):
    masks, scores = scene
    assert _choose("the bright lamp", masks, scores) == (0, False)
    assert find_directions("a feast on the copyright page").fires is False
    index, fired = _choose(
        "the bright lamp", masks, scores, vocabulary=TAS_CODE_VOCABULARY, match="substring"
    )
    assert fired and index == 2  # "bright" contains "right": the code re-selects in the right half


def test_code_vocabulary_has_no_bottom_and_skips_punctuated_sentences(scene):
    masks, scores = scene
    assert _choose("bottom", masks, scores, vocabulary=TAS_CODE_VOCABULARY, match="substring") == (0, False)
    assert (
        find_directions(
            "man on the left.", TAS_CODE_VOCABULARY, match="substring", skip_punctuated=True
        ).fires
        is False
    )
    assert find_directions(
        "man on the left", TAS_CODE_VOCABULARY, match="substring", skip_punctuated=True
    ).fires


def test_precedence_and_empty_quadrant(scene):
    masks, scores = scene
    # Both horizontal sides named: the code's order (left first) decides.
    assert _choose("left of the right car", masks, scores)[0] == 0
    # Named quadrant with no mask keeps the current choice.
    only_top = masks[[0, 1, 2]]
    index, fired = _choose("bottom left", only_top, scores[[0, 1, 2]])
    assert fired and index == 0


def test_nan_scores_follow_python_comparisons(scene):
    masks, _ = scene
    nan = np.full(len(masks), np.nan)
    # Half comparisons with NaN are false, so the second quadrant's first mask wins, as in the code.
    index, fired = _choose("left", masks, nan)
    assert fired and index == 3


def test_vocabulary_is_checked():
    with pytest.raises(ValueError, match="unknown direction 'middle'"):
        check_vocabulary({"middle": ["centre"]})
    with pytest.raises(ValueError, match="list of non-empty words"):
        check_vocabulary({"left": "left"})
