"""Referring-segmentation metrics over sentences (docs/METHODS.md#metrics).

Per sentence, ``I = |pred AND gt|`` and ``U = |pred OR gt|`` (pixel counts). Over a split:

- oIoU (cIoU, overall IoU) = 100 * sum(I) / sum(U)   (0 when sum(U) = 0)
- mIoU = 100 * mean(I / U), with I / U = 0 for a sentence whose U = 0
- Prec@X = 100 * fraction of sentences with IoU > X, X in {0.5, 0.6, 0.7, 0.8, 0.9}, strict ``>`` as TAS.
  The comparison is exact on integers (``10 * I > 10X * U``), so an IoU of exactly 0.5 never counts.

Every sentence counts: a sentence with no prediction is scored with an empty mask (I = 0, U = |gt|).
Ref-Diff's area-weighted "mIoU" is deliberately not offered.

Ranking metrics (what an annotator sees: the first few candidates of a ranked list), from each sentence's
IoUs of its candidates in rank order (``ious[0]`` is the top candidate) and its proposal ceiling:

- Hit@k = 100 * fraction of sentences whose best IoU among the top k candidates is > 0.5 (strict, as
  Prec@0.5; Hit@1 equals Prec@0.5), k in {1, 3, 5, 10}. A sentence with fewer than k candidates uses those
  it has; one with none counts as a miss.
- oracle IoU@k = 100 * mean over sentences of the best IoU among the top k (0 for no candidate).
- proposal ceiling = 100 * mean over sentences of the best IoU over *every* candidate the pipeline returned
  (for pipelines that rank all proposals, every proposal), and ``ceiling hit`` the share of sentences where
  that best IoU is > 0.5. When oracle IoU@10 is close to the ceiling but IoU@1 is far below, ranking limits
  the pipeline; when the ceiling itself is low, the proposals do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "HIT_KS",
    "PREC_THRESHOLDS",
    "SentenceScore",
    "best_iou_at",
    "intersection_union",
    "iou_histogram",
    "ranking_summary",
    "summarize",
]

# Thresholds in tenths, so the strict comparison is exact integer arithmetic.
PREC_THRESHOLDS: tuple[int, ...] = (5, 6, 7, 8, 9)

#: The k of Hit@k and oracle IoU@k; the benchmark keeps the IoUs of the top ``max(HIT_KS)`` candidates.
HIT_KS: tuple[int, ...] = (1, 3, 5, 10)


@dataclass(frozen=True)
class SentenceScore:
    """Pixel counts of one sentence's prediction against its ground truth."""

    intersection: int
    union: int

    @property
    def iou(self) -> float:
        """I / U, and 0 when U = 0."""
        return self.intersection / self.union if self.union > 0 else 0.0


def intersection_union(pred: np.ndarray | None, gt: np.ndarray) -> SentenceScore:
    """I and U of an ``H x W`` predicted mask against the ``H x W`` ground truth (``None`` = no prediction).

    Raises:
        ValueError: the two masks differ in shape.
    """
    gt = np.asarray(gt, dtype=bool)
    if pred is None:
        return SentenceScore(0, int(gt.sum()))
    pred = np.asarray(pred, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(
            f"predicted mask is {pred.shape[0]}x{pred.shape[1]} but ground truth is {gt.shape[0]}x{gt.shape[1]}"
        )
    return SentenceScore(int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum()))


def summarize(scores: Sequence[SentenceScore] | Iterable[tuple[int, int]]) -> dict[str, float | int]:
    """oIoU, mIoU and Prec@0.5..0.9 (all in percent) of a list of sentence scores.

    Accepts ``SentenceScore`` objects or ``(I, U)`` pairs. Returns ``{"n", "oiou", "miou", "prec@0.5", ...}``;
    with no sentences every metric is 0.
    """
    pairs = [
        (s.intersection, s.union) if isinstance(s, SentenceScore) else (int(s[0]), int(s[1])) for s in scores
    ]
    for i, u in pairs:
        if i < 0 or u < 0 or i > u:
            raise ValueError(f"invalid sentence counts I={i}, U={u} (need 0 <= I <= U)")
    n = len(pairs)
    total_i = sum(i for i, _ in pairs)
    total_u = sum(u for _, u in pairs)
    ious = [i / u if u > 0 else 0.0 for i, u in pairs]
    result: dict[str, float | int] = {
        "n": n,
        "oiou": 100.0 * total_i / total_u if total_u > 0 else 0.0,
        "miou": 100.0 * sum(ious) / n if n else 0.0,
    }
    for tenths in PREC_THRESHOLDS:
        hits = sum(1 for i, u in pairs if u > 0 and 10 * i > tenths * u)
        result[f"prec@0.{tenths}"] = 100.0 * hits / n if n else 0.0
    return result


def iou_histogram(ious: Iterable[float], bins: int = 10) -> list[int]:
    """Counts of IoUs in ``bins`` equal bins over [0, 1] (1.0 falls in the last bin)."""
    counts = [0] * bins
    for iou in ious:
        counts[min(int(iou * bins), bins - 1)] += 1
    return counts


def best_iou_at(ious: Sequence[float], k: int) -> float:
    """The best IoU among the first ``k`` of ``ious`` (rank order); 0 when there is none.

    Raises:
        ValueError: ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    head = [float(v) for v in list(ious)[:k]]
    return max(head) if head else 0.0


def ranking_summary(
    ranked_ious: Sequence[Sequence[float]],
    ceilings: Sequence[float | None],
    ks: Sequence[int] = HIT_KS,
) -> dict[str, float]:
    """Hit@k, oracle IoU@k and the proposal ceiling (all in percent) of a list of sentences.

    Args:
        ranked_ious: per sentence, the IoUs of its candidates in rank order (at least the top ``max(ks)``).
        ceilings: per sentence, the best IoU over all its candidates (``None``: no candidate, counted as 0).
        ks: the k to report.

    Returns ``{"hit@1", ..., "oracle_iou@1", ..., "ceiling_iou", "ceiling_hit"}``; with no sentences every
    value is 0.

    Raises:
        ValueError: the two lists differ in length, or an IoU lies outside [0, 1].
    """
    if len(ranked_ious) != len(ceilings):
        raise ValueError(f"{len(ranked_ious)} ranked IoU lists for {len(ceilings)} ceilings")
    for values in ranked_ious:
        for v in values:
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"an IoU of {v} is outside [0, 1]")
    n = len(ranked_ious)
    result: dict[str, float] = {}
    for k in ks:
        best = [best_iou_at(ious, k) for ious in ranked_ious]
        result[f"hit@{k}"] = 100.0 * sum(1 for b in best if b > 0.5) / n if n else 0.0
        result[f"oracle_iou@{k}"] = 100.0 * sum(best) / n if n else 0.0
    tops = [float(c) if c is not None else 0.0 for c in ceilings]
    result["ceiling_iou"] = 100.0 * sum(tops) / n if n else 0.0
    result["ceiling_hit"] = 100.0 * sum(1 for c in tops if c > 0.5) / n if n else 0.0
    return result
