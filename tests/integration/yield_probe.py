"""Test-only tasks on the real Celery app, for the yield test: background units and an interactive job.

``workers.celery_app.app`` with its real settings, plus two tasks that record when they ran as JSON lines
(wall-clock seconds) in ``log_path``. Started as ``celery -A tests.integration.yield_probe worker``, with
the test database in ``DATABASE_URL``.

- ``yield_probe.background``: background work as the worker runs it: inside the task layer's own
  ``background_yielding`` (the real hook, asking the real selector in the database), one engine
  ``checkpoint`` before each unit of ``unit_s`` seconds; records ``{"tag": "u007", "start", "end"}`` per
  unit, and ``{"tag": "summary", "pauses", "paused_s", "units"}`` at the end. It stops once
  ``stop_path`` exists (or after ``max_units``).
- ``yield_probe.interactive``: waits until the background log holds ``after_units`` units (observable
  progress, not a fixed delay), claims the interactive job ``job_id`` with the real ``job_claim`` (so
  the job is running, as a worker's job is), holds it ``hold_s`` seconds, records
  ``{"tag": "interactive", "start", "end"}``, then marks the job succeeded.

``python -m tests.integration.yield_probe send TASK QUEUE ARGS_JSON`` sends one task from a separate
process, so the sender uses the settings of the broker under test.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from workers.celery_app import app

BACKGROUND = "yield_probe.background"
INTERACTIVE = "yield_probe.interactive"
POLL_S = 0.1


def _append(log_path: str, record: dict) -> None:
    with open(log_path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def records(log_path: Path) -> list[dict]:
    """The records written so far, in the order they were written."""
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]


@app.task(name=BACKGROUND, bind=True, acks_late=True)
def background(self, log_path: str, unit_s: float, stop_path: str, max_units: int = 1000) -> int:
    """Units of ``unit_s`` seconds, each after a checkpoint, until ``stop_path`` exists; returns the count."""
    from workers.engine.core.meter import checkpoint
    from workers.tasks.yielding import background_yielding

    units = 0
    with background_yielding("Probe background task") as stats:
        while units < max_units and not os.path.exists(stop_path):
            checkpoint(f"unit {units}")
            start = time.time()
            time.sleep(unit_s)
            _append(log_path, {"tag": f"u{units:03d}", "start": start, "end": time.time()})
            units += 1
    summary = {"tag": "summary", "units": units, "pid": os.getpid(), "nice": os.nice(0)}
    if stats is not None:
        summary.update(pauses=stats.pauses, paused_s=stats.paused_s, ceilings=stats.ceilings)
    _append(log_path, summary)
    return units


@app.task(name=INTERACTIVE, bind=True, acks_late=True)
def interactive(self, job_id: int, hold_s: float, log_path: str, units_path: str, after_units: int) -> str:
    """Once ``after_units`` background units are done, run interactive job ``job_id`` for ``hold_s`` seconds."""
    from server.ris.models import JobState, SegmentationJob
    from server.ris.services import job_claim

    while sum(item["tag"].startswith("u") for item in records(Path(units_path))) < after_units:
        time.sleep(POLL_S)
    worker = f"{self.request.hostname or socket.gethostname()}:{os.getpid()}"
    if job_claim(job_id=job_id, worker=worker, task_id=str(self.request.id or "")) is None:
        raise RuntimeError(f"job {job_id} could not be claimed")
    start = time.time()
    time.sleep(hold_s)
    _append(log_path, {"tag": "interactive", "start": start, "end": time.time(), "worker": worker})
    SegmentationJob.objects.filter(pk=job_id).update(state=JobState.SUCCEEDED)
    return "done"


def send(task: str, queue: str, args: list) -> None:
    """Send one task to ``queue``; print when."""
    from workers.celery_app import ensure_broker_folders

    ensure_broker_folders()
    app.send_task(task, args=args, queue=queue)
    print(json.dumps({"task": task, "sent": time.time()}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "send":
        sys.exit("usage: python -m tests.integration.yield_probe send TASK QUEUE ARGS_JSON")
    import django

    django.setup()
    send(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
