"""Fusing ranked candidate lists of one expression from several pipelines into one (docs/METHODS.md#ensemble).

Candidates are matched by their mask (the RLE's size and counts): members that read the same cached
proposals return the same RLE for the same mask, so a mask two members rank is one fused candidate. A mask
a member did not return gets nothing from that member.

- ``rrf`` (reciprocal-rank fusion, Cormack et al. 2009): ``fused = sum_m w_m / (k + rank_m)`` with 1-based
  ranks, ``k = 60`` by default.
- ``minmax``: each member's scores mapped to [0, 1] (``(s - min) / (max - min)``; all equal -> 1), then
  ``fused = sum_m w_m * s'_m / sum_m w_m``.
- ``zscore``: each member's scores standardised (``(s - mean) / std``; ``std = 0`` -> 0), then the same
  weighted mean.

Each fused candidate's ``components`` hold, per member, ``rank_<member>`` (1-based; -1 when the member did
not return the mask) and ``score_<member>`` (its raw score; 0 when absent), and ``score`` (the fused value).
Ties keep the order in which masks first appear, members in config order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from workers.engine.core.types import Candidate


def mask_key(candidate: Candidate) -> tuple[tuple[int, ...], str]:
    """The identity of a candidate's mask: ``(size, counts)`` of its RLE."""
    counts = candidate.rle["counts"]
    return tuple(int(s) for s in candidate.rle["size"]), counts if isinstance(counts, str) else str(counts)


def _normalised(scores: np.ndarray, how: str) -> np.ndarray:
    if how == "minmax":
        low, high = float(scores.min()), float(scores.max())
        return np.ones_like(scores) if high == low else (scores - low) / (high - low)
    std = float(scores.std())
    return np.zeros_like(scores) if std == 0 else (scores - float(scores.mean())) / std


def fuse(
    rankings: Sequence[Sequence[Candidate]],
    names: Sequence[str],
    *,
    fusion: str = "rrf",
    rrf_k: float = 60.0,
    weights: Sequence[float] | None = None,
) -> list[Candidate]:
    """One fused ranking from each member's ranking of the same expression (best first).

    Args:
        rankings: per member, its candidates best first.
        names: the members' names (component keys), same order.
        fusion: ``"rrf"``, ``"minmax"`` or ``"zscore"``.
        rrf_k: the ``k`` of reciprocal-rank fusion.
        weights: one weight per member (``None``: all 1).

    Raises:
        ValueError: lists of different lengths, or an unknown fusion.
    """
    if len(rankings) != len(names):
        raise ValueError(f"{len(rankings)} rankings for {len(names)} member names")
    weights = [1.0] * len(names) if weights is None else [float(w) for w in weights]
    if len(weights) != len(names):
        raise ValueError(f"{len(weights)} weights for {len(names)} members")
    if fusion not in ("rrf", "minmax", "zscore"):
        raise ValueError(f"unknown fusion {fusion!r}; use rrf, minmax or zscore")
    first: dict[tuple, Candidate] = {}
    ranks: dict[tuple, dict[str, int]] = {}
    raw: dict[tuple, dict[str, float]] = {}
    contribution: dict[tuple, float] = {}
    for name, weight, ranked in zip(names, weights, rankings, strict=True):
        ranked = list(ranked)
        scores = np.asarray([c.score for c in ranked], dtype=np.float64)
        normalised = _normalised(scores, fusion) if fusion != "rrf" and len(ranked) else scores
        for position, candidate in enumerate(ranked):
            key = mask_key(candidate)
            first.setdefault(key, candidate)
            ranks.setdefault(key, {})[name] = position + 1
            raw.setdefault(key, {})[name] = float(candidate.score)
            if fusion == "rrf":
                value = weight / (rrf_k + position + 1)
            else:
                value = weight * float(normalised[position])
            contribution[key] = contribution.get(key, 0.0) + value
    total_weight = sum(weights) or 1.0
    keys = list(first)
    fused = [contribution[k] if fusion == "rrf" else contribution[k] / total_weight for k in keys]
    order = sorted(range(len(keys)), key=lambda i: (-fused[i], i))
    out = []
    for rank, i in enumerate(order):
        key = keys[i]
        base = first[key]
        components: dict[str, float] = {}
        for name in names:
            components[f"rank_{name}"] = float(ranks[key].get(name, -1))
            components[f"score_{name}"] = raw[key].get(name, 0.0)
        components["score"] = float(fused[i])
        out.append(
            Candidate(
                rank=rank,
                rle=dict(base.rle),
                bbox_xyxy=base.bbox_xyxy,
                area=base.area,
                score=float(fused[i]),
                components=components,
            )
        )
    return out
