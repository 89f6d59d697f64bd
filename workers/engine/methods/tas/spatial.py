"""TAS's spatial rectifier: re-select the best mask of the quadrant(s) a sentence names (docs/METHODS.md#tas-spatial-rectifier).

The masks of an image are split into four quadrants at the median of their centroids: a mask whose centroid
row is below the median row is in the top half (else the bottom half), a mask whose centroid column is
below the median column is in the left half (else the right half). Centroids are the mean pixel row and
column truncated to integers, as in the public code.

A sentence names at most one horizontal side (``left``/``right``) and one vertical side (``top``/``bottom``)
through the words of a vocabulary. The re-selection follows the public code:

- both sides named (``"top right"``): the best-scoring mask of that quadrant;
- one side named (``"left"``): the better of the best masks of the two quadrants of that half (the second
  quadrant wins a tie);
- an empty quadrant contributes weight 0 and, when it is the named quadrant, keeps the current choice;
- nothing named: the choice stays.

When a sentence names both sides of one axis, the code's order decides: ``top`` before ``bottom``,
``left`` before ``right``.

Matching (``match``): ``"word"`` (ours) matches whole lower-case words, so "bright" never fires "right" and
"feast" never fires "east"; ``"substring"`` reproduces the public code, which tests ``word in sentence``.
:data:`TAS_CODE_VOCABULARY` is the public code's word lists (no "bottom", "upper" or "lower");
:data:`DEFAULT_VOCABULARY` adds the obvious missing words. The public code also skips the rectifier when
the sentence ends with punctuation (a side effect of its entity parser, see ``skip_punctuated``).

This module is our rule (``rectifier_rule="directions"``): it fires whenever a direction word is present.
The code's rule, gated by its ReClip-style entity parse, is ``workers.engine.methods.tas.rectifier``
(``rectifier_rule="code"``, the default in ``peer_compat``). NaN scores (the public code's empty negative list) compare as
in Python: a quadrant's first mask stands for it and the second quadrant of a half wins, as in the code.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from workers.engine.methods.tas.vocabulary import DEFAULT_VOCABULARY, DIRECTIONS, MATCH_CHOICES

# Quadrant numbers (the code's part1..part4 order).
TOP_LEFT, BOTTOM_LEFT, TOP_RIGHT, BOTTOM_RIGHT = 0, 1, 2, 3
QUADRANT_NAMES = ("top_left", "bottom_left", "top_right", "bottom_right")
_QUADRANT_OF = {
    ("top", "left"): TOP_LEFT,
    ("bottom", "left"): BOTTOM_LEFT,
    ("top", "right"): TOP_RIGHT,
    ("bottom", "right"): BOTTOM_RIGHT,
}
# For a single named side: the two quadrants of that half, in the code's comparison order.
_HALF = {
    "left": (TOP_LEFT, BOTTOM_LEFT),
    "right": (TOP_RIGHT, BOTTOM_RIGHT),
    "top": (TOP_LEFT, TOP_RIGHT),
    "bottom": (BOTTOM_LEFT, BOTTOM_RIGHT),
}

_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class SpatialQuery:
    """The sides a sentence names.

    Attributes:
        horizontal: ``"left"``, ``"right"`` or ``None``.
        vertical: ``"top"``, ``"bottom"`` or ``None``.
        words: the vocabulary words found, in vocabulary order.
    """

    horizontal: str | None = None
    vertical: str | None = None
    words: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fires(self) -> bool:
        return self.horizontal is not None or self.vertical is not None


def find_directions(
    sentence: str,
    vocabulary: Mapping[str, Sequence[str]] = DEFAULT_VOCABULARY,
    *,
    match: str = "word",
    skip_punctuated: bool = False,
) -> SpatialQuery:
    """The sides ``sentence`` names (see the module docstring for ``match`` and ``skip_punctuated``)."""
    if match not in MATCH_CHOICES:
        raise ValueError(f"match must be one of {MATCH_CHOICES}, got {match!r}")
    text = sentence.lower()
    stripped = text.rstrip()
    if skip_punctuated and stripped and stripped[-1] in string.punctuation:
        return SpatialQuery()
    words = set(_WORD.findall(text))
    found: dict[str, list[str]] = {}
    for direction in DIRECTIONS:
        for word in vocabulary.get(direction, ()):
            hit = word in text if match == "substring" else word in words
            if hit:
                found.setdefault(direction, []).append(word)
    horizontal = "left" if "left" in found else "right" if "right" in found else None
    vertical = "top" if "top" in found else "bottom" if "bottom" in found else None
    return SpatialQuery(horizontal, vertical, tuple(w for d in DIRECTIONS for w in found.get(d, [])))


def mask_centroids(masks: torch.Tensor | np.ndarray) -> np.ndarray:
    """``N x 2`` int64 ``(row, col)`` centroids of ``N x H x W`` bool masks (mean truncated; 0 for an empty mask)."""
    array = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    array = array.astype(bool, copy=False)
    out = np.zeros((array.shape[0], 2), dtype=np.int64)
    rows = np.arange(array.shape[1], dtype=np.float64)
    cols = np.arange(array.shape[2], dtype=np.float64)
    for i, mask in enumerate(array):
        area = mask.sum()
        if area == 0:
            continue
        out[i, 0] = int((mask.sum(axis=1) * rows).sum() / area)
        out[i, 1] = int((mask.sum(axis=0) * cols).sum() / area)
    return out


def quadrants(centroids: np.ndarray) -> np.ndarray:
    """Quadrant number (:data:`TOP_LEFT` ...) of each ``(row, col)`` centroid, split at the medians."""
    centroids = np.asarray(centroids)
    if centroids.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    median_row, median_col = np.median(centroids[:, 0]), np.median(centroids[:, 1])
    bottom = centroids[:, 0] >= median_row
    right = centroids[:, 1] >= median_col
    return (bottom.astype(np.int64) + 2 * right.astype(np.int64)).astype(np.int64)


@dataclass(frozen=True)
class Rectified:
    """The rectifier's answer for one sentence.

    Attributes:
        index: the chosen mask (the input choice when the rectifier did not change it).
        fired: the sentence named a side and the rectifier ran.
        query: the sides found.
    """

    index: int
    fired: bool
    query: SpatialQuery


def rectify(weights: np.ndarray, centroids: np.ndarray, query: SpatialQuery, current: int) -> Rectified:
    """Re-select the mask for ``query`` as the public code does.

    Args:
        weights: ``N`` scores (the code uses softmax probabilities; any order-preserving score gives the
            same choice).
        centroids: ``N x 2`` ``(row, col)``.
        query: from :func:`find_directions`.
        current: the choice before rectification (the best score).
    """
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if not query.fires or weights.size == 0:
        return Rectified(current, False, query)
    parts = quadrants(centroids)
    best_weight = np.zeros(4)
    best_index = np.full(4, current, dtype=np.int64)
    for q in range(4):
        members = np.flatnonzero(parts == q)
        if members.size:
            top = members[int(np.argmax(weights[members]))]  # the first maximum (the first NaN, if any)
            best_weight[q], best_index[q] = weights[top], top
    if query.horizontal is not None and query.vertical is not None:
        chosen = int(best_index[_QUADRANT_OF[(query.vertical, query.horizontal)]])
    else:
        first, second = _HALF[query.vertical or query.horizontal]  # type: ignore[index]
        chosen = int(best_index[first] if best_weight[first] > best_weight[second] else best_index[second])
    return Rectified(chosen, True, query)
