"""From per-mask scores to ranked :class:`~workers.engine.core.types.Candidate` objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from workers.engine.blocks.masks import Proposals
from workers.engine.core.types import Candidate


def candidate_of(
    proposals: Proposals, index: int, rank: int, score: float, components: dict[str, float]
) -> Candidate:
    """The candidate of proposal ``index`` at ``rank`` (its RLE, ``xyxy`` box and area)."""
    box = proposals.bbox_xyxy[index]
    return Candidate(
        rank=rank,
        rle=dict(proposals.rles[index]),
        bbox_xyxy=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
        area=int(proposals.area[index]),
        score=float(score),
        components=components,
    )


def rank_candidates(
    proposals: Proposals, scores: Sequence[float] | np.ndarray, components: Mapping[str, Sequence[float]]
) -> list[Candidate]:
    """Candidates of every proposal, best score first (ties: earlier proposal first; NaN last).

    Args:
        proposals: N masks.
        scores: N final scores.
        components: name -> N values, copied into each candidate's ``components``.

    Raises:
        ValueError: a number of scores other than N.
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.shape[0] != len(proposals):
        raise ValueError(f"{values.shape[0]} scores for {len(proposals)} proposals")
    order_key = np.where(np.isnan(values), -np.inf, values)
    order = np.lexsort((np.arange(len(values)), -order_key))
    parts = {name: np.asarray(v, dtype=np.float64).reshape(-1) for name, v in components.items()}
    return [
        candidate_of(
            proposals, int(index), rank, values[index], {n: float(v[index]) for n, v in parts.items()}
        )
        for rank, index in enumerate(order)
    ]
