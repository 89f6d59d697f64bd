"""Click-to-refine: ``refine_mask(request_id)`` answers a ``server.web`` RefineRequest with SAM's mask.

The request runs through the shared lifecycle (``workers.tasks.lifecycle``): claimed by the rule of all
work (so a redelivered message takes over only the request its own first delivery claimed), a heartbeat
while SAM works, the error in words on the request, database-unavailable retries with backoff. The body
asks the engine for the mask of the clicks and ``refine_request_succeed`` stores the COCO RLE. The web
process sends this task by name (the ``interactive`` lane, workers/lanes.py) and never imports it.
"""

from __future__ import annotations

import time
from typing import Any

from workers.celery_app import app
from workers.tasks import engine_access
from workers.tasks.lifecycle import DB_RETRY_MAX, Lifecycle, Work, run_work

SAM_PREFIX = "SAM could not refine the mask: "


def _lifecycle() -> Lifecycle:
    from server.web.services.refine import (
        refine_request_claim,
        refine_request_fail,
        refine_request_heartbeat,
        refine_stale_seconds,
    )

    return Lifecycle(
        label="Refine request",
        claim=lambda *, pk, worker, task_id: refine_request_claim(
            request_id=pk, worker=worker, task_id=task_id
        ),
        beat=lambda *, pk, attempt: refine_request_heartbeat(request_id=pk, attempt=attempt),
        fail=lambda work, words: refine_request_fail(
            request_id=work.row.pk, error=words, attempt=work.attempt
        ),
        stale_seconds=refine_stale_seconds,
        words=lambda row, words: SAM_PREFIX + words,
    )


def _refine(work: Work) -> str:
    """Ask SAM for the mask of the claimed request's prompts and store it; the outcome in one word."""
    from server.ris.services import image_load_rgb
    from server.web.services.refine import refine_request_succeed

    request = work.row
    image = request.image
    rgb = image_load_rgb(image)
    started = time.perf_counter()
    rle = engine_access.engine_get().refine(
        engine_access.image_input(rgb, image.sha256),
        points_xy=[(float(x), float(y)) for x, y in request.points_xy],
        labels=[int(v) for v in request.labels],
        box_xyxy=tuple(request.box_xyxy) if request.box_xyxy else None,
        mask_rle=request.mask_rle,
    )
    seconds = time.perf_counter() - started
    if work.stopped or not refine_request_succeed(
        request_id=request.pk, rle=rle, seconds=seconds, attempt=work.attempt
    ):
        return "discarded"
    return "succeeded"


@app.task(bind=True, name="workers.web_tasks.refine_mask", max_retries=DB_RETRY_MAX, acks_late=True)
def refine_mask(self: Any, request_id: int) -> str:
    """Answer refine request ``request_id`` with SAM's mask for its clicks.

    Returns ``succeeded``, ``failed`` (the error is on the request), ``skipped`` (not claimable) or
    ``discarded`` (expired or answered meanwhile).
    """
    return run_work(self, _lifecycle(), request_id, _refine)
