"""Referring-segmentation metrics over sentences (docs/METHODS.md#metrics).

Per sentence, ``I = |pred AND gt|`` and ``U = |pred OR gt|`` (pixel counts). Over a split:

- oIoU (cIoU, overall IoU) = 100 * sum(I) / sum(U)   (0 when sum(U) = 0)
- mIoU = 100 * mean(I / U), with I / U = 0 for a sentence whose U = 0
- Prec@X = 100 * fraction of sentences with IoU > X, X in {0.5, 0.6, 0.7, 0.8, 0.9}, strict ``>`` as TAS.
  The comparison is exact on integers (``10 * I > 10X * U``), so an IoU of exactly 0.5 never counts.

Every sentence counts: a sentence with no prediction is scored with an empty mask (I = 0, U = |gt|).
Ref-Diff's area-weighted "mIoU" is deliberately not offered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PREC_THRESHOLDS", "SentenceScore", "intersection_union", "iou_histogram", "summarize"]

# Thresholds in tenths, so the strict comparison is exact integer arithmetic.
PREC_THRESHOLDS: tuple[int, ...] = (5, 6, 7, 8, 9)


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
