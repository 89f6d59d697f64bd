"""Segmentation jobs: ``run_segmentation_job`` (a job id in, the ranked candidates stored) and
``prepare_image`` (a warm-up of one image's engine work: one unit of the background lane).

The job runs through the shared lifecycle (``workers.tasks.lifecycle``): claimed by the rule of all work,
a heartbeat while it runs (a cancelled job is noticed and its result not written), the error in words on
the job, database-unavailable retries with backoff. The body loads the image, asks the engine for the
expression's ranked candidates, and ``job_succeed`` writes them with the config that actually ran.

Early candidates: on an image without proposals yet the engine first ranks a coarse point grid and hands
that ranking to ``on_partial``; ``job_partial_candidates`` stores it at once (the page shows it, the
annotator may accept from it), and the final candidates replace it when the full run ends. A cancel
noticed there stops the engine like one noticed at a progress report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError

from workers.celery_app import app
from workers.lanes import BACKGROUND
from workers.tasks import engine_access
from workers.tasks.lifecycle import DB_RETRY_MAX, Lifecycle, Work, run_work
from workers.tasks.progress import JobProgress, JobStopped, stage_seconds
from workers.tasks.yielding import background_yielding

logger = logging.getLogger(__name__)


def _lifecycle() -> Lifecycle:
    from server.ris.services import job_claim, job_fail
    from server.ris.services.jobs import job_heartbeat
    from server.ris.services.work import job_stale_seconds

    return Lifecycle(
        label="Job",
        claim=lambda *, pk, worker, task_id: job_claim(job_id=pk, worker=worker, task_id=task_id),
        beat=lambda *, pk, attempt: job_heartbeat(job_id=pk, attempt=attempt),
        fail=lambda work, words: job_fail(
            job_id=work.row.pk, error=words, timings=work.notes, attempt=work.attempt
        ),
        stale_seconds=job_stale_seconds,
        background=lambda job: job.lane == BACKGROUND,
    )


def _reporter(job_id: int, attempt: int) -> JobProgress:
    """The job's stage reporter: writes through ``job_progress``; a database hiccup only skips one report."""
    from server.ris.selectors import job_recent_timings
    from server.ris.services import job_progress

    def report(progress: float, stage: Mapping[str, Any]) -> bool:
        try:
            return job_progress(job_id=job_id, progress=progress, attempt=attempt, stage=stage)
        except (OperationalError, InterfaceError):
            logger.warning("Job %s: could not record its progress; going on", job_id, exc_info=True)
            return True

    history = [stage_seconds(timings) for timings in job_recent_timings(job_id=job_id)]
    typical = {
        stage: sum(h.get(stage, 0.0) for h in history) / len(history)
        for stage in {name for h in history for name in h}
    }
    return JobProgress(report, history_s=typical)


def _early_writer(
    job_id: int, attempt: int, progress: JobProgress, timings: dict[str, Any]
) -> Callable[[Any], None]:
    """``on_partial`` for the engine: store the early candidates (a ``Prediction`` with ``partial=True``)
    and note in ``timings["early_s"]`` the seconds from this call to them; raise ``JobStopped`` if the
    job ended meanwhile."""
    from server.ris.services import job_partial_candidates

    started = time.perf_counter()

    def write(prediction: Any) -> None:
        ranked = prediction.candidates
        early = [candidate.to_json() for candidate in (ranked[0] if ranked else [])]
        try:
            still_running = job_partial_candidates(job_id=job_id, candidates=early, attempt=attempt)
        except (OperationalError, InterfaceError):
            logger.warning("Job %s: could not store its early candidates; going on", job_id, exc_info=True)
            still_running = True
        if not still_running:
            raise JobStopped("the job left the running state when its early candidates came")
        timings["early_s"] = time.perf_counter() - started
        progress.restart()  # the full run reports its stages afresh

    return write


def _segment(work: Work) -> str:
    """Run the engine on the claimed job and store its candidates; the outcome in one word."""
    from server.ris.services import image_load_rgb, job_succeed

    job = work.row
    timings = work.notes
    timings["queue_wait_s"] = (job.started_at - job.enqueued_at).total_seconds() if job.started_at else None
    timings["attempt"] = work.attempt
    progress = _reporter(job.pk, work.attempt)
    started = time.perf_counter()
    try:
        progress.enter("loading")
        image = job.expression.image
        rgb = image_load_rgb(image)
        timings["load_image_s"] = time.perf_counter() - started
        engine = engine_access.engine_get()
        started = time.perf_counter()
        with engine.meter.capture() as meter, engine.meter.watch(progress):
            prediction = engine.predict(
                engine_access.image_input(rgb, image.sha256),
                [job.expression.text],
                pipeline=job.pipeline,
                config=job.config,
                top_k=settings.RIS_CANDIDATES_KEPT,
                on_partial=_early_writer(job.pk, work.attempt, progress, timings),
            )
        timings["predict_s"] = time.perf_counter() - started
        if work.yielded is not None:  # background: predict_s includes the pauses for interactive work
            timings["yield_paused_s"] = round(work.yielded.paused_s, 3)
        progress.enter("writing")
    except JobStopped:
        logger.info(
            "Job %s stopped at a progress report: it was cancelled (or taken over); nothing written", job.pk
        )
        return "cancelled"
    if work.stopped:
        logger.info(
            "Job %s is no longer running (cancelled?); %s s of work discarded, nothing written",
            job.pk,
            round(timings["predict_s"], 1),
        )
        return "cancelled"
    timings["engine"] = meter.snapshot()
    ranked = prediction.candidates
    candidates = [candidate.to_json() for candidate in (ranked[0] if ranked else [])]
    if not job_succeed(
        job_id=job.pk, candidates=candidates, timings=timings, config=prediction.config, attempt=work.attempt
    ):
        return "discarded"
    return "succeeded"


@app.task(bind=True, name="workers.tasks.run_segmentation_job", max_retries=DB_RETRY_MAX, acks_late=True)
def run_segmentation_job(self: Any, job_id: int) -> str:
    """Claim job ``job_id``, segment its expression on its image, store the ranked candidates.

    Returns ``succeeded``, ``failed`` (the error is on the job), ``skipped`` (not claimable),
    ``cancelled`` (cancelled while it ran) or ``discarded`` (finished meanwhile by another delivery).
    """
    return run_work(self, _lifecycle(), job_id, _segment)


@app.task(bind=True, name="workers.tasks.prepare_image", max_retries=0, ignore_result=True)
def prepare_image(self: Any, image_id: int, pipeline: str | None = None) -> str:
    """Warm-up in the background lane: one image's image-level engine work into the cache ahead of time.

    Not a work row: nothing waits on it, so it has no claim and no retry; a failure costs only time
    (the image's first job does the work itself) and is logged. It yields to interactive work between
    its units (``workers.tasks.yielding``).
    """
    from server.ris.models import Image
    from server.ris.services import image_load_rgb

    image = Image.objects.filter(pk=image_id).first()
    if image is None:
        return "missing"
    try:
        engine = engine_access.engine_get()
        with background_yielding(f"Preparing image {image_id}"):
            engine.prepare(
                engine_access.image_input(image_load_rgb(image), image.sha256),
                pipeline=pipeline or settings.RIS_DEFAULT_PIPELINE,
            )
    except (OperationalError, InterfaceError):
        raise
    except Exception:  # a warm-up that fails costs only time: the job does the work itself
        logger.exception("Preparing image %s failed; its first job will do the image work", image_id)
        return "failed"
    return "prepared"
