"""Lanes: which Celery queue each kind of work goes to. Routing lives here, in one place.

Two lanes, each its own broker queue, each served by its own worker process(es):

- ``interactive``: work a person is waiting for at the screen: a refine click, an expression typed on
  one image. It must never wait behind background work.
- ``background``: work nobody watches second by second: preparing an uploaded image (one message per
  image, so an interactive worker sharing the machine waits at most one unit), bulk CSV/JSON rows,
  benchmark shards, retries of old jobs.

``default`` stays the queue of light periodic housekeeping (the reconciler). This module imports only
the standard library: the web process imports it to pick a queue, the settings to build the routes.
"""

from __future__ import annotations

INTERACTIVE = "interactive"
BACKGROUND = "background"
LANES: tuple[str, ...] = (INTERACTIVE, BACKGROUND)
HOUSEKEEPING_QUEUE = "default"

# Task names are those queued messages carry (they never change: messages must survive an upgrade).
TASK_LANES: dict[str, str] = {
    "workers.tasks.run_segmentation_job": INTERACTIVE,  # a job's own lane (SegmentationJob.lane) wins
    "workers.web_tasks.refine_mask": INTERACTIVE,
    "workers.tasks.prepare_image": BACKGROUND,
    "workers.benchmark_tasks.run_benchmark_shard": BACKGROUND,
}


def lane_queue(lane: str) -> str:
    """The broker queue of ``lane`` (the queue is named after its lane). Raises ValueError for another name."""
    if lane not in LANES:
        raise ValueError(f"Unknown lane {lane!r}; the lanes are {', '.join(LANES)}.")
    return lane


def task_routes() -> dict[str, dict[str, str]]:
    """``CELERY_TASK_ROUTES``: every model task to its lane's queue (the reconciler stays on ``default``)."""
    return {name: {"queue": lane_queue(lane)} for name, lane in TASK_LANES.items()}
