"""Stage-wise progress of a segmentation job, for the page: what the worker is doing, how far, how long.

The engine's meter tells its listeners each stage as it starts and each ``progress`` report inside one
(``workers.engine.core.meter``); ``JobProgress`` turns those into the job's public stages and writes them
(with a progress figure and an estimate of the seconds left) through ``job_progress``, at most once per
``min_interval_s`` except at stage changes. Public stages, in order: ``loading`` (the image), ``waiting``
(for another worker's preparation of the same image: ``done`` of ``total`` of its points,
``workers.engine.core.inflight``), ``proposals`` (``done`` of ``total`` points), ``features``, ``scoring``,
``writing``. A job with early candidates goes through them twice: the coarse run, then (after
``restart``) the full run.

The estimate: in ``proposals``, the stage's seconds so far scaled to the points left, plus the seconds the
later stages took in this pipeline's recent jobs (``history_s``, 0 when there are none); in ``waiting``,
the other worker's pace as seen since the wait began, scaled to its points left, plus the later stages
but ``proposals`` (which the wait replaces); in a later stage, the recent jobs' seconds of the stages not
yet reached. A cancelled job makes ``job_progress``
answer False, and the listener raises ``JobStopped`` to stop the engine at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

# Engine stage names (meter.stage) -> the job's public stage.
STAGE_OF: dict[str, str] = {
    "waiting": "waiting",
    "proposals": "proposals",
    "scoring": "scoring",
    "clip_visual": "features",
    "captions": "features",
    "mllm_descriptions": "features",
    "sd_encode": "features",
    "sd_denoise": "features",
    "attention_map": "features",
    "attention_proposals": "features",
    "clip_soft": "features",
    "clip_hard": "features",
}
ORDER = ("loading", "waiting", "proposals", "features", "scoring", "writing")
#: Estimates below this many seconds are not reported (the stage's words say enough).
MIN_ESTIMATE_S = 1.0
MIN_INTERVAL_S = 1.0  # between two writes within one stage (a stage change is always written)
# Where each public stage starts on the 0-1 progress bar (proposals spans 0.1-0.7 by points done).
START = {
    "loading": 0.02,
    "waiting": 0.05,
    "proposals": 0.1,
    "features": 0.7,
    "scoring": 0.85,
    "writing": 0.95,
}


class JobStopped(Exception):
    """The job was cancelled or taken over while the engine worked; the engine is stopped by raising."""


class JobProgress:
    """A meter listener that reports a job's stage, progress and estimate.

    ``report(progress, stage) -> bool`` writes them (False: the job is no longer running). ``history_s``:
    typical seconds per public stage from this pipeline's recent jobs (may be empty).
    """

    def __init__(
        self,
        report: Callable[[float, Mapping[str, Any]], bool],
        *,
        history_s: Mapping[str, float] | None = None,
        min_interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._report = report
        self._history = dict(history_s or {})
        self._min_interval = MIN_INTERVAL_S if min_interval_s is None else min_interval_s
        self._clock = clock
        self._stage = ""
        self._stage_started = clock()
        self._last_write = float("-inf")
        self._wait_first: tuple[float, int] | None = None  # (time, points done) when the wait began

    def restart(self) -> None:
        """Let the stages start over (the full run after the early candidates' coarse run)."""
        self._stage = ""
        self._wait_first = None

    def enter(self, stage: str) -> None:
        """Enter public stage ``stage`` (``loading`` / ``writing``, which the engine does not announce)."""
        self._move(stage, None, None, "", force=True)

    def __call__(self, name: str, done: int | None, total: int | None, unit: str) -> None:
        stage = STAGE_OF.get(name)
        if stage is None:
            return
        self._move(stage, done, total, unit, force=stage != self._stage)

    def _move(self, stage: str, done: int | None, total: int | None, unit: str, *, force: bool) -> None:
        now = self._clock()
        if stage != self._stage:
            if self._stage in ORDER and stage in ORDER and ORDER.index(stage) < ORDER.index(self._stage):
                return  # a pipeline's inner stage (e.g. text after scoring began) does not move back
            self._stage, self._stage_started = stage, now
        if not force and now - self._last_write < self._min_interval:
            return
        self._last_write = now
        payload: dict[str, Any] = {"name": stage}
        progress = START[stage]
        if done is not None and total:
            payload.update(done=done, total=total, unit=unit)
            if stage in ("proposals", "waiting"):
                progress = START["proposals"] + (START["features"] - START["proposals"]) * done / total
        estimate = self._estimate(stage, done, total, now)
        if estimate is not None and estimate >= MIN_ESTIMATE_S:  # "about 0 s left" tells nobody anything
            payload["estimate_s"] = round(estimate, 1)
        if not self._report(progress, payload):
            raise JobStopped(f"the job left the running state during {stage}")

    def _estimate(self, stage: str, done: int | None, total: int | None, now: float) -> float | None:
        later = sum(self._history.get(s, 0.0) for s in ORDER[ORDER.index(stage) + 1 :])
        if stage == "waiting" and done is not None and total:
            if self._wait_first is None:
                self._wait_first = (now, done)
            first_time, first_done = self._wait_first
            if done <= first_done:
                return None
            pace = (now - first_time) / (done - first_done)  # seconds per point of the other worker
            return pace * (total - done) + later - self._history.get("proposals", 0.0)
        if stage == "proposals" and done and total:
            spent = now - self._stage_started
            return spent * (total - done) / done + later
        if not self._history:
            return None
        own = max(0.0, self._history.get(stage, 0.0) - (now - self._stage_started))
        return own + later


def stage_seconds(timings: Mapping[str, Any]) -> dict[str, float]:
    """Seconds per public stage of one finished job, from its ``timings["engine"]["stages"]``."""
    stages = ((timings or {}).get("engine") or {}).get("stages") or {}
    seconds: dict[str, float] = {}
    for name, tally in stages.items():
        public = STAGE_OF.get(name)
        if public and isinstance(tally, Mapping):
            seconds[public] = seconds.get(public, 0.0) + float(tally.get("seconds") or 0.0)
    return seconds
