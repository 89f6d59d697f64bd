"""Thin Celery tasks: a job id in, the engine called, services write the result.

The engine (and with it torch) is imported inside the task bodies, so importing this module (which
the Celery app does in every process that loads it) stays cheap, and tests can hand in a fake engine
by replacing ``engine_get``.

``run_segmentation_job`` owns its retry policy: when the database cannot be reached it retries with
exponential backoff (the job's row is the truth, so nothing is decided while it is away); every other
error fails the job with the error in words, which the review page shows next to a retry button.

While the engine works, a heartbeat thread reports through ``job_progress`` every quarter of
``RIS_JOB_STALE_SECONDS`` (at most every minute): a live worker's job never looks lost to the reconciler,
however long its model calls take, and a job cancelled while it runs is noticed (``job_progress`` answers
False) and its result is not written.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import TracebackType
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, connections

from workers.celery_app import app

logger = logging.getLogger(__name__)

DB_RETRY_MAX = 8
DB_RETRY_BASE_SECONDS = 2.0
DB_RETRY_CAP_SECONDS = 120.0


def engine_get() -> Any:
    """The process's engine (one per worker process, models loaded once), on Django's ``RIS_ENGINE`` settings."""
    from workers.engine.runtime import get_engine

    return get_engine(settings.RIS_ENGINE)


def image_input_make(rgb: Any, sha256: str) -> Any:
    from workers.engine.core.types import ImageInput

    return ImageInput(rgb=rgb, sha256=sha256)


def _db_backoff(retries: int) -> float:
    return min(DB_RETRY_CAP_SECONDS, DB_RETRY_BASE_SECONDS * 2**retries)


class JobHeartbeat:
    """A thread that calls ``job_progress`` every ``interval`` seconds while the block runs.

    ``stopped`` turns True when the job is no longer running (cancelled, or given to another worker):
    the caller then writes nothing. A database error on one beat is logged and the next beat tries again.
    """

    def __init__(self, job_id: int, *, progress: float, interval: float) -> None:
        self.job_id = job_id
        self.progress = progress
        self.interval = interval
        self.stopped = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"job-{job_id}-heartbeat", daemon=True)

    def __enter__(self) -> JobHeartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._done.set()
        self._thread.join(timeout=self.interval + 10)

    def _run(self) -> None:
        from server.ris.services import job_progress

        try:
            while not self._done.wait(self.interval):
                try:
                    if not job_progress(job_id=self.job_id, progress=self.progress):
                        self.stopped = True
                        logger.info(
                            "Job %s is no longer running (cancelled?); its result will not be written",
                            self.job_id,
                        )
                        return
                except (OperationalError, InterfaceError) as error:
                    logger.warning(
                        "Heartbeat of job %s could not reach the database (%s)", self.job_id, error
                    )
                    connections.close_all()
        finally:
            connections.close_all()  # this thread's own connections


def heartbeat_interval() -> float:
    """Seconds between heartbeats: a quarter of the stale time, between 1 s and 60 s."""
    return max(1.0, min(60.0, float(settings.RIS_JOB_STALE_SECONDS) / 4))


def _error_in_words(error: BaseException) -> str:
    from server.ris.errors import RisError
    from workers.engine.core.errors import EngineError

    if isinstance(error, EngineError | RisError):
        return str(error)
    if isinstance(error, SoftTimeLimitExceeded):
        return (
            f"The job took longer than its time limit ({settings.CELERY_TASK_SOFT_TIME_LIMIT} s) and was stopped. "
            "Try a smaller image, fewer proposals, or raise RIS_JOB_SOFT_TIME_LIMIT."
        )
    if isinstance(error, MemoryError):
        return "The worker ran out of memory on this job. Try a smaller image or a lighter pipeline."
    text = str(error).strip()
    return (
        f"Unexpected {type(error).__name__}" + (f": {text}" if text else "") + " (details in the worker log)."
    )


@app.task(bind=True, name="workers.tasks.run_segmentation_job", max_retries=DB_RETRY_MAX)
def run_segmentation_job(self: Any, job_id: int) -> str:
    """Claim job ``job_id``, segment its expression on its image, store the ranked candidates."""
    from server.ris.services import image_load_rgb, job_claim, job_fail, job_progress, job_succeed

    worker = str(self.request.hostname or socket.gethostname())
    try:
        job = job_claim(job_id=job_id, worker=worker, task_id=str(self.request.id or ""))
        if job is None:
            logger.info("Job %s is not claimable (taken, finished or cancelled); skipping", job_id)
            return "skipped"
        queued_s = (job.started_at - job.created_at).total_seconds() if job.started_at else None
        timings: dict[str, Any] = {"queue_wait_s": queued_s, "attempt": job.attempts}
        try:
            started = time.perf_counter()
            image = job.expression.image
            rgb = image_load_rgb(image)
            timings["load_image_s"] = time.perf_counter() - started
            if not job_progress(job_id=job_id, progress=0.1):
                return "cancelled"
            engine = engine_get()
            started = time.perf_counter()
            heartbeat = JobHeartbeat(job_id, progress=0.1, interval=heartbeat_interval())
            with heartbeat, engine.meter.capture() as meter:
                prediction = engine.predict(
                    image_input_make(rgb, image.sha256),
                    [job.expression.text],
                    pipeline=job.pipeline,
                    config=job.config,
                    top_k=settings.RIS_CANDIDATES_KEPT,
                )
            timings["predict_s"] = time.perf_counter() - started
            if heartbeat.stopped:
                logger.info(
                    "Job %s is no longer running (cancelled?); %s s of work discarded, nothing written",
                    job_id,
                    round(timings["predict_s"], 1),
                )
                return "cancelled"
            timings["engine"] = meter.snapshot()
            ranked = prediction.candidates
            candidates = [candidate.to_json() for candidate in (ranked[0] if ranked else [])]
            if not job_succeed(
                job_id=job_id, candidates=candidates, timings=timings, config=prediction.config
            ):
                return "discarded"
            return "succeeded"
        except (OperationalError, InterfaceError):
            raise
        except Exception as error:
            logger.exception("Job %s failed", job_id)
            job_fail(job_id=job_id, error=_error_in_words(error), timings=timings)
            return "failed"
    except (OperationalError, InterfaceError) as error:
        # Celery's Django fixup closes broken connections before the retry runs.
        logger.warning("Database unavailable for job %s (%s); retrying", job_id, error)
        raise self.retry(exc=error, countdown=_db_backoff(self.request.retries)) from error


@app.task(bind=True, name="workers.tasks.prepare_image", max_retries=0, ignore_result=True)
def prepare_image(self: Any, image_id: int, pipeline: str | None = None) -> str:
    """Warm-up at low priority: do an image's image-level engine work into the cache ahead of time."""
    from server.ris.models import Image
    from server.ris.services import image_load_rgb

    image = Image.objects.filter(pk=image_id).first()
    if image is None:
        return "missing"
    try:
        engine = engine_get()
        engine.prepare(
            image_input_make(image_load_rgb(image), image.sha256),
            pipeline=pipeline or settings.RIS_DEFAULT_PIPELINE,
        )
    except (OperationalError, InterfaceError):
        raise
    except Exception:  # a warm-up that fails costs only time: the job does the work itself
        logger.exception("Preparing image %s failed; its first job will do the image work", image_id)
        return "failed"
    return "prepared"


@app.task(name="workers.tasks.reconcile_jobs", ignore_result=True)
def reconcile_jobs() -> dict[str, list[int]]:
    """Periodic: send again jobs whose message may be lost, fail those whose workers kept dying."""
    from server.ris.services import jobs_reconcile
    from server.web.services.refine import refine_requests_expire

    report = jobs_reconcile()
    expired = refine_requests_expire()
    return {"requeued": report.requeued, "failed": report.failed, "refines_expired": expired}
