"""Where a benchmark run's time goes (``manage.py benchmark --profile``).

The runner records its own phases (``decode`` in the prefetch thread, ``waiting for images`` when the loop
was blocked on it, ``metrics`` in the post-processing thread, ``writing``), and the engine's meter records
the stages inside ``Engine.predict`` (``proposals``, ``clip_visual``, ``captions``, ``sd_denoise``, ``text``,
``scoring``, ...). :meth:`RunProfile.table` groups the stages into the phases a reader asks about:

- ``proposals``: automatic masks (SAM / MobileSAM) or a cache hit on them;
- ``features``: per-mask image features (CLIP visual, captions, diffusion, MLLM descriptions);
- ``text + scoring``: text features and the ranking itself;
- ``other predict``: the rest of ``Engine.predict`` (model loading on first use, checking the store,
  resolving configs, work no stage times).

The pipelines' stages do not nest (``tests/benchmark/test_schedule_profile.py`` checks that their sum stays
within the predict call's seconds for every pipeline), so the phases add up. Work in the background threads
overlaps the main loop; the table says which rows are on the critical path.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PHASE_OF_STAGE", "RunProfile"]

PHASE_OF_STAGE: dict[str, str] = {
    "proposals": "proposals",
    "attention_proposals": "proposals",
    "clip_visual": "features",
    "clip_soft": "features",
    "clip_hard": "features",
    "captions": "features",
    "sd_encode": "features",
    "sd_denoise": "features",
    "attention_map": "features",
    "mllm_descriptions": "features",
    "text": "text + scoring",
    "scoring": "text + scoring",
}

_BACKGROUND = {"decode", "metrics"}
_ORDER = (
    "decode",
    "waiting for images",
    "proposals",
    "features",
    "text + scoring",
    "other predict",
    "metrics",
    "waiting for metrics",
    "writing",
)


@dataclass
class RunProfile:
    """Seconds per phase of one run (thread-safe adds). ``wall_seconds`` is set by the caller at the end."""

    seconds: dict[str, float] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def add_predict(self, predict_seconds: float, stage_snapshot: Mapping[str, Any]) -> None:
        """Split one ``Engine.predict`` call's seconds by the stages its private meter recorded.

        Args:
            predict_seconds: wall seconds of the call.
            stage_snapshot: ``Meter.snapshot()["stages"]`` of a capture around the call.
        """
        inside = 0.0
        for stage, tally in stage_snapshot.items():
            if stage.startswith(("predict:", "prepare:")):
                continue
            secs = float(tally.get("seconds", 0.0))
            with self._lock:
                self.stages[stage] = self.stages.get(stage, 0.0) + secs
            phase = PHASE_OF_STAGE.get(stage)
            if phase is None:
                continue
            self.add(phase, secs)
            inside += secs
        self.add("other predict", max(predict_seconds - inside, 0.0))

    def table(self) -> str:
        """A plain-text table: phase, seconds, share of the run's wall time, critical path or background."""
        wall = self.wall_seconds or sum(v for k, v in self.seconds.items() if k not in _BACKGROUND) or 1.0
        lines = [f"{'phase':<22}{'seconds':>10}{'% of wall':>11}  where"]
        for phase in (*_ORDER, *sorted(set(self.seconds) - set(_ORDER))):
            if phase not in self.seconds:
                continue
            secs = self.seconds[phase]
            where = "background thread" if phase in _BACKGROUND else "critical path"
            lines.append(f"{phase:<22}{secs:>10.2f}{100 * secs / wall:>10.1f}%  {where}")
        lines.append(f"{'wall':<22}{self.wall_seconds:>10.2f}")
        if self.stages:
            lines.append(
                "engine stages (seconds): "
                + ", ".join(f"{k} {v:.2f}" for k, v in sorted(self.stages.items()))
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"phases": dict(self.seconds), "stages": dict(self.stages), "wall_seconds": self.wall_seconds}
