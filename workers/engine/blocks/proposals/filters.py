"""Post-filters of mask proposals (docs/METHODS.md#post-filters): pure functions ``Proposals -> Proposals``.

- ``drop_small``: minimum area (TAS: under 2000 px dropped; Ref-Diff: at most 10000 px dropped, i.e.
  ``keep_equal=False``).
- ``drop_overlapping``: for pairs whose intersection over the smaller area exceeds a threshold, drop the
  smaller (TAS: 0.4). Greedy by default: masks are visited from the largest down and a mask is dropped
  only by a mask that is itself kept. ``peer_compat=True`` reproduces TAS's public code, which is not
  greedy: every offending pair drops its smaller member, even when the larger one was dropped already.
  Equal areas: the later mask counts as the smaller one.
- ``keep_largest``: the ``k`` largest masks (Ref-Diff: 10), largest first.
"""

from __future__ import annotations

import numpy as np

from workers.engine.blocks.masks import Proposals, intersection_matrix
from workers.engine.core.errors import ConfigError


def drop_small(proposals: Proposals, min_area: int, *, keep_equal: bool = True) -> Proposals:
    """Keep masks with ``area >= min_area`` (``area > min_area`` when ``keep_equal`` is false), in order."""
    if min_area < 0:
        raise ConfigError(f"min_area must be >= 0, got {min_area}")
    keep = proposals.area >= min_area if keep_equal else proposals.area > min_area
    return proposals.filter(keep)


def overlap_over_smaller(proposals: Proposals) -> np.ndarray:
    """``N x N`` float64: ``|m_i & m_j| / min(|m_i|, |m_j|)`` (0 where either mask is empty; diagonal 0)."""
    inter = intersection_matrix(proposals.rles, proposals.rles).astype(np.float64)
    smaller = np.minimum(proposals.area[:, None], proposals.area[None, :]).astype(np.float64)
    ratio = np.divide(inter, smaller, out=np.zeros_like(inter), where=smaller > 0)
    np.fill_diagonal(ratio, 0.0)
    return ratio


def _smaller_of(area: np.ndarray, i: int, j: int) -> int:
    """Index of the smaller of masks i < j (the later one on equal areas)."""
    return i if area[i] < area[j] else j


def drop_overlapping(proposals: Proposals, threshold: float, *, peer_compat: bool = False) -> Proposals:
    """Drop the smaller mask of every pair whose overlap over the smaller area is ``> threshold``.

    Keeps the survivors in their input order. See the module docstring for the greedy default and the
    ``peer_compat`` (TAS code) variant.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"overlap threshold must be in [0, 1], got {threshold}")
    n = len(proposals)
    if n < 2:
        return proposals
    ratio = overlap_over_smaller(proposals)
    area = proposals.area
    dropped = np.zeros(n, dtype=bool)
    if peer_compat:
        for i in range(n):
            for j in range(i + 1, n):
                if ratio[i, j] > threshold:
                    dropped[_smaller_of(area, i, j)] = True
    else:
        order = sorted(range(n), key=lambda k: (-int(area[k]), k))  # largest first, earlier first on ties
        kept: list[int] = []
        for k in order:
            if any(ratio[k, m] > threshold for m in kept):
                dropped[k] = True
            else:
                kept.append(k)
    return proposals.filter(~dropped)


def keep_largest(proposals: Proposals, k: int) -> Proposals:
    """The ``k`` largest masks, largest first (earlier first on equal areas)."""
    if k < 0:
        raise ConfigError(f"k must be >= 0, got {k}")
    order = np.lexsort((np.arange(len(proposals)), -proposals.area))
    return proposals.filter(order[:k])
