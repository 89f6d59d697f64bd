"""Celery task of the review page's click-to-refine (queue ``gpu``, routed in settings).

``refine_mask(request_id)`` loads the ``server.web`` RefineRequest by id, claims it (queued -> running,
so a redelivered message does not run it twice), asks the engine's SAM for the mask of the clicks and
stores the COCO RLE, or the reason in words. The engine is imported inside the task, so the web
process, which sends this task by name, never imports torch.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db import InterfaceError, OperationalError

from workers.celery_app import app

logger = logging.getLogger(__name__)

DB_RETRY_MAX = 5


def engine_get() -> Any:
    """The process's engine (tests replace this with a fake)."""
    from django.conf import settings

    from workers.engine.runtime import get_engine

    return get_engine(settings.RIS_ENGINE)


def _error_in_words(error: BaseException) -> str:
    from workers.engine.core.errors import EngineError

    if isinstance(error, EngineError):
        return f"SAM could not refine the mask: {error}"
    text = str(error).strip()
    return (
        f"SAM could not refine the mask: unexpected {type(error).__name__}"
        + (f": {text}" if text else "")
        + "."
    )


@app.task(bind=True, name="workers.web_tasks.refine_mask", max_retries=DB_RETRY_MAX, acks_late=True)
def refine_mask(self: Any, request_id: int) -> str:
    """Answer refine request ``request_id`` with SAM's mask for its clicks."""
    from server.ris.services import image_load_rgb
    from server.web.services.refine import refine_request_claim, refine_request_fail, refine_request_succeed

    try:
        request = refine_request_claim(request_id=request_id)
        if request is None:
            logger.info("Refine request %s is not queued (taken or answered); skipping", request_id)
            return "skipped"
        try:
            from workers.engine.core.types import ImageInput

            image = request.image
            rgb = image_load_rgb(image)
            started = time.perf_counter()
            rle = engine_get().refine(
                ImageInput(rgb=rgb, sha256=image.sha256),
                points_xy=[(float(x), float(y)) for x, y in request.points_xy],
                labels=[int(v) for v in request.labels],
                box_xyxy=tuple(request.box_xyxy) if request.box_xyxy else None,
                mask_rle=request.mask_rle,
            )
            seconds = time.perf_counter() - started
            refine_request_succeed(request_id=request_id, rle=rle, seconds=seconds)
            return "succeeded"
        except (OperationalError, InterfaceError):
            raise
        except Exception as error:
            logger.exception("Refine request %s failed", request_id)
            refine_request_fail(request_id=request_id, error=_error_in_words(error))
            return "failed"
    except (OperationalError, InterfaceError) as error:
        from django.db import connections

        connections.close_all()
        raise self.retry(exc=error, countdown=min(60, 2 ** (self.request.retries + 1))) from error
