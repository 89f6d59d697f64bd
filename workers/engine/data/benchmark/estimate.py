"""An estimate of a whole benchmark run from its first images (printed before the run goes on).

After ``warmup`` images the command prints the expected wall time, peak memory and model calls of the whole
split. The first image pays one-off costs (loading models, first-call set-up), so the rate is taken from the
warm-up images after the first (from the first alone when the warm-up is one image), per image: image-level
work dominates every pipeline here, and the sentences per image average out over a split. Peak memory is the
process's largest resident set so far (models are loaded by then; the per-image cache is bounded by
``RIS_CACHE_MEMORY_MB``) plus, on CUDA, the largest allocation on the device.

The estimate is checked against the measured wall time at the end of the run (``Estimate.error``), and both
go to ``summary.json`` (``run.estimate``).
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Estimate", "RunEstimator", "peak_memory_mb"]


def peak_memory_mb() -> float:
    """The process's peak resident set in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def cuda_peak_mb() -> float | None:
    """The largest CUDA allocation of this process in MiB, or ``None`` without CUDA (torch imported lazily)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - the worker always has torch
        return None
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / (1 << 20)


@dataclass
class Estimate:
    """The expected cost of the whole run.

    Attributes:
        wall_seconds: expected wall time of the run from its start (this process's part, for ``--distributed``
            the time to the last shard at the measured per-worker rates).
        peak_memory_mb: expected peak resident memory (MiB); ``cuda_peak_mb`` on the device, when used.
        model_calls: expected model calls of the whole run, by model.
        basis_images: images the estimate was made from; ``seconds_per_image``: the rate used.
        measured_wall_seconds: filled in at the end; ``error``: (estimate - measured) / measured.
    """

    wall_seconds: float
    peak_memory_mb: float
    model_calls: dict[str, float]
    basis_images: int
    seconds_per_image: float
    images: int
    sentences: int
    cuda_peak_mb: float | None = None
    measured_wall_seconds: float | None = None

    @property
    def error(self) -> float | None:
        if not self.measured_wall_seconds:
            return None
        return (self.wall_seconds - self.measured_wall_seconds) / self.measured_wall_seconds

    def line(self) -> str:
        """One line for the terminal."""
        calls = sum(self.model_calls.values())
        gpu = f", {self.cuda_peak_mb:.0f} MiB on the GPU" if self.cuda_peak_mb is not None else ""
        return (
            f"Estimate from the first {self.basis_images} image(s): about {_duration(self.wall_seconds)} for "
            f"{self.images} images / {self.sentences} sentences ({self.seconds_per_image:.2f} s per image), "
            f"peak memory about {self.peak_memory_mb:.0f} MiB{gpu}, about {calls:,.0f} model calls"
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "error": self.error}


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class RunEstimator:
    """Feeds on finished images; returns the :class:`Estimate` once, when the warm-up is complete.

    Args:
        images: images the run will process (pending ones; a resumed run counts only what is left).
        sentences: their sentences (times pipelines).
        warmup: images to measure before estimating (>= 1).
        workers: workers sharing the images (``--distributed``); the rate is per worker.
    """

    images: int
    sentences: int
    warmup: int = 3
    workers: int = 1
    _walls: list[float] = field(default_factory=list)
    _calls: dict[str, float] = field(default_factory=dict)
    _elapsed: float = 0.0
    estimate: Estimate | None = None

    def __post_init__(self) -> None:
        if self.warmup < 1:
            raise ValueError(f"the warm-up needs at least one image, got {self.warmup}")

    def observe(self, wall_seconds: float, model_calls: Mapping[str, float]) -> Estimate | None:
        """Record one finished image (its wall seconds and model calls); the estimate when it is made now."""
        self._walls.append(wall_seconds)
        self._elapsed += wall_seconds
        for model, n in model_calls.items():
            self._calls[model] = self._calls.get(model, 0.0) + n
        if self.estimate is not None or len(self._walls) < min(self.warmup, self.images):
            return None
        basis = self._walls[1:] or self._walls
        rate = sum(basis) / len(basis)
        seen = len(self._walls)
        remaining = max(self.images - seen, 0)
        wall = self._elapsed + rate * remaining / max(self.workers, 1)
        calls = {m: n / seen * self.images for m, n in sorted(self._calls.items())}
        self.estimate = Estimate(
            wall_seconds=wall,
            peak_memory_mb=peak_memory_mb(),
            model_calls=calls,
            basis_images=seen,
            seconds_per_image=rate,
            images=self.images,
            sentences=self.sentences,
            cuda_peak_mb=cuda_peak_mb(),
        )
        return self.estimate
