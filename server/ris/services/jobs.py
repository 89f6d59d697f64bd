"""The life of a segmentation job: dispatch, claim, progress, success, failure, cancel, retry, reconcile.

The database row is the truth; a queue message carries only the job id and may arrive twice, late, or
never. The claim, heartbeat, fail and reconciler rules are those of every kind of work
(``server.ris.services.work``): a job is claimed when queued, on a redelivery of the message that claimed
it, or when its heartbeat is older than ``RIS_JOB_STALE_SECONDS``; a job whose worker was lost is sent
again, and failed in words after ``RIS_JOB_MAX_ATTEMPTS`` attempts. What is a job's own:

- ``job_partial_candidates`` stores early candidates (``Candidate.partial``, ranked over a coarse point
  grid) while the job runs, under the same attempt check as ``job_progress``, so the page can show them
  at once; they may be accepted like final ones.
- ``job_succeed`` writes all candidates in one transaction, replacing any earlier ones (the early ones
  too, except those a review chose: the verdict keeps its mask), and only while the job is still running
  (under the worker's attempt, when given): a cancelled job stays cancelled, a finished one is not
  written twice.
- ``job_progress`` is the job's heartbeat with a progress figure; it answers False once the job was
  cancelled, which is how a worker notices a cancel while the engine works.
- ``job_cancel`` and ``job_retry`` are the user's buttons; ``jobs_retry`` retries many at once. Which lane
  a retry joins: a person's Retry of a recent job keeps its lane (a typed expression stays interactive);
  a Retry of a job older than ``RIS_RETRY_BACKGROUND_AFTER_S``, and every bulk retry, goes to the
  background lane; the reconciler's re-sends keep the lane the row has.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from server.ris.errors import Conflict, InvalidInput
from server.ris.models import Candidate, JobLane, JobState, SegmentationJob
from server.ris.services.dispatch import RUN_SEGMENTATION_JOB
from server.ris.services.work import (
    ReconcileReport,
    WorkKind,
    job_stale_seconds,
    work_claim,
    work_dispatch,
    work_fail,
    work_heartbeat,
    work_reconcile,
)
from workers.lanes import lane_queue

logger = logging.getLogger(__name__)


def _words_given_up(job: SegmentationJob) -> str:
    return (
        f"The worker running this job stopped responding {job.attempts} times "
        f"(no heartbeat for {settings.RIS_JOB_STALE_SECONDS} s); it was given up. Retry it, or try a smaller "
        "image or another pipeline."
    )


JOB_WORK = WorkKind(
    label="job",
    model=SegmentationJob,
    task_name=RUN_SEGMENTATION_JOB,
    stale_seconds=job_stale_seconds,
    words_given_up=_words_given_up,
    queue_field="lane",  # a lane is named as its queue (workers.lanes)
    related=("expression__image",),
    resets={"progress": 0.0, "error": "", "stage": {}},
)


def job_dispatch(*, job_id: int) -> bool:
    """Send the job's message to its lane's queue now and record when; False if the broker refused.

    A job in the task's routed lane (interactive) is sent by the route (so the app's routing, a test's
    included, decides); a job of another lane names its lane's queue.
    """
    lane = SegmentationJob.objects.filter(pk=job_id).values_list("lane", flat=True).first()
    queue = lane_queue(lane) if lane else None
    return work_dispatch(JOB_WORK, pk=job_id, queue=None if queue == JOB_WORK.routed_queue() else queue)


def job_enqueue_on_commit(*, job_id: int) -> None:
    """Dispatch the job once the surrounding transaction commits (at once outside a transaction)."""
    transaction.on_commit(partial(job_dispatch, job_id=job_id))


def job_claim(*, job_id: int, worker: str, task_id: str = "") -> SegmentationJob | None:
    """Mark the job running for ``worker`` and count the attempt; None if it is not this worker's to run.

    The claim rule of all work (``work_claim``). Returns the job with its expression and image loaded
    (``job.attempts`` is this attempt's number), or None when the job does not exist, is finished or
    cancelled, or is running under a live worker.
    """
    return work_claim(JOB_WORK, pk=job_id, worker=worker, task_id=task_id)


def job_heartbeat(*, job_id: int, attempt: int | None = None) -> bool:
    """Record a heartbeat; False if the job is no longer running (under ``attempt`` when given)."""
    return work_heartbeat(JOB_WORK, pk=job_id, attempt=attempt)


def job_progress(
    *,
    job_id: int,
    progress: float,
    attempt: int | None = None,
    stage: Mapping[str, Any] | None = None,
) -> bool:
    """Record progress (0-1), the stage (see ``SegmentationJob.stage``) and a heartbeat.

    Returns False if the job is no longer running (e.g. cancelled): the worker stops.
    """
    value = min(1.0, max(0.0, float(progress)))
    values: dict[str, Any] = {"progress": value}
    if stage is not None:
        values["stage"] = dict(stage)
    return work_heartbeat(JOB_WORK, pk=job_id, attempt=attempt, **values)


def job_partial_candidates(
    *, job_id: int, candidates: Sequence[Mapping[str, Any]], attempt: int | None = None
) -> bool:
    """Store early candidates of a running job (``partial=True``), replacing earlier early ones.

    ``candidates``: as for :func:`job_succeed`. Early candidates a review already chose are kept, and
    then no new early candidates are written (the annotator has picked; the final ones are on the way).
    Returns False, writing nothing, when the job is no longer running (under ``attempt`` when given):
    the worker stops, as on a False from ``job_progress``. Raises ``InvalidInput`` for a malformed
    candidate.
    """
    rows = _candidate_rows(job_id, candidates, partial=True)
    with transaction.atomic():
        job = SegmentationJob.objects.select_for_update().get(pk=job_id)
        if job.state != JobState.RUNNING or (attempt is not None and job.attempts != attempt):
            return False
        early = Candidate.objects.filter(job_id=job_id, partial=True)
        if early.filter(reviews__isnull=False).exists():
            return True
        early.delete()
        Candidate.objects.bulk_create(rows)
    return True


def job_succeed(
    *,
    job_id: int,
    candidates: Sequence[Mapping[str, Any]],
    timings: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    attempt: int | None = None,
) -> bool:
    """Write the job's candidates (replacing any earlier ones) and mark it succeeded, in one transaction.

    ``candidates``: dicts as ``workers.engine.core.types.Candidate.to_json()`` gives them (rank, rle,
    bbox_xyxy, area, score, components). ``config``: the full config the worker resolved and ran with.
    Returns False, writing nothing, when the job is no longer running (cancelled, or already finished
    by another delivery of its message), or, with ``attempt``, running under another attempt (taken over).
    Raises ``InvalidInput`` for a malformed candidate.
    """
    rows = _candidate_rows(job_id, candidates)
    with transaction.atomic():
        job = SegmentationJob.objects.select_for_update().get(pk=job_id)
        if job.state != JobState.RUNNING or (attempt is not None and job.attempts != attempt):
            logger.info(
                "Job %s is %s (attempt %s); the result of attempt %s is discarded",
                job_id,
                job.state,
                job.attempts,
                attempt,
            )
            return False
        chosen_early = Q(partial=True, reviews__isnull=False)
        Candidate.objects.filter(job_id=job_id).exclude(
            pk__in=Candidate.objects.filter(chosen_early)
        ).delete()
        Candidate.objects.bulk_create(rows)
        job.state = JobState.SUCCEEDED
        job.progress = 1.0
        job.error = ""
        job.finished_at = timezone.now()
        job.timings = dict(timings or {})
        update_fields = ["state", "progress", "error", "finished_at", "timings"]
        if config is not None:
            job.config = dict(config)
            update_fields.append("config")
        job.save(update_fields=update_fields)
    return True


def job_fail(
    *, job_id: int, error: str, timings: Mapping[str, Any] | None = None, attempt: int | None = None
) -> bool:
    """Mark a queued or running job failed with ``error`` in words; False if it had already ended.

    With ``attempt``, only a job still running under that attempt is failed.
    """
    values = {"timings": dict(timings)} if timings is not None else {}
    return work_fail(
        JOB_WORK, pk=job_id, error=error or "The job failed without a message.", attempt=attempt, **values
    )


def job_cancel(*, job: SegmentationJob) -> SegmentationJob:
    """Cancel a queued or running job (a running one's result is discarded when it arrives)."""
    updated = SegmentationJob.objects.filter(pk=job.pk, state__in=[JobState.QUEUED, JobState.RUNNING]).update(
        state=JobState.CANCELLED, finished_at=timezone.now()
    )
    job.refresh_from_db()
    if updated == 0:
        raise Conflict(f"Job {job.pk} is {job.state}; only queued or running jobs can be cancelled.")
    return job


def job_retry_lane(*, job: SegmentationJob, now: datetime | None = None) -> str:
    """The lane a person's single Retry of ``job`` joins.

    A recent job keeps its lane (a Retry of an expression just typed stays interactive); a job created
    more than ``RIS_RETRY_BACKGROUND_AFTER_S`` ago is a retry of old work and goes to the background lane,
    as bulk retries do (``jobs_retry``). The reconciler's re-sends never come here: they keep the lane
    the row has.
    """
    now = now or timezone.now()
    age_s = (now - job.created_at).total_seconds()
    if job.lane == JobLane.INTERACTIVE and age_s > float(settings.RIS_RETRY_BACKGROUND_AFTER_S):
        return JobLane.BACKGROUND
    return str(job.lane)


def job_retry(*, job: SegmentationJob, lane: str | None = None) -> SegmentationJob:
    """Queue a failed or cancelled job again and send it to a worker on commit.

    It joins the back of its lane (``enqueued_at`` is now, so the queue position counts the jobs queued
    before the Retry), without the early candidates of its last attempt (unless a review chose one):
    ``lane`` when given, else ``job_retry_lane`` (a recent job keeps its lane, an old one goes to the
    background). Raises ``Conflict`` unless the job is failed or cancelled, ``InvalidInput`` for an
    unknown lane.
    """
    if lane is None:
        lane = job_retry_lane(job=job)
    if lane not in JobLane.values:
        raise InvalidInput(f"Unknown lane {lane!r}; the lanes are {', '.join(JobLane.values)}.")
    with transaction.atomic():
        updated = SegmentationJob.objects.filter(
            pk=job.pk, state__in=[JobState.FAILED, JobState.CANCELLED]
        ).update(
            state=JobState.QUEUED,
            enqueued_at=timezone.now(),
            stage={},
            lane=lane,
            progress=0.0,
            error="",
            started_at=None,
            heartbeat_at=None,
            finished_at=None,
            dispatched_at=None,
            worker="",
        )
        job.refresh_from_db()
        if updated == 0:
            raise Conflict(f"Job {job.pk} is {job.state}; only failed or cancelled jobs can be retried.")
        # The last attempt's early candidates go (the new attempt makes its own), except one a review chose.
        Candidate.objects.filter(job_id=job.pk, partial=True, reviews__isnull=True).delete()
        job_enqueue_on_commit(job_id=job.pk)
    return job


def jobs_retry(*, jobs: Sequence[SegmentationJob]) -> list[SegmentationJob]:
    """Retry several failed or cancelled jobs at once, all in the background lane (a bulk retry is
    background work: nobody waits on one of them at the screen), in the order given.

    All or nothing: raises ``Conflict`` naming the first job that is neither failed nor cancelled, and
    then none is queued again.
    """
    with transaction.atomic():
        return [job_retry(job=job, lane=JobLane.BACKGROUND) for job in jobs]


def jobs_reconcile(*, now: datetime | None = None) -> ReconcileReport:
    """Send again the jobs whose message or worker was lost; fail those whose workers died too often."""
    return work_reconcile(JOB_WORK, now=now)


def _candidate_rows(
    job_id: int, candidates: Sequence[Mapping[str, Any]], *, partial: bool = False
) -> list[Candidate]:
    rows = [_candidate_row(job_id, item, index, partial=partial) for index, item in enumerate(candidates)]
    ranks = [row.rank for row in rows]
    if len(set(ranks)) != len(ranks):
        raise InvalidInput(f"The engine returned candidates with repeated ranks: {sorted(ranks)}.")
    return rows


def _candidate_row(job_id: int, item: Mapping[str, Any], index: int, *, partial: bool = False) -> Candidate:
    try:
        rank = int(item.get("rank", index))
        rle = item["rle"]
        bbox = [float(v) for v in item["bbox_xyxy"]]
        area = int(item["area"])
        score = float(item["score"])
        components = {str(k): float(v) for k, v in dict(item.get("components") or {}).items()}
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidInput(f"Candidate {index} from the engine is malformed ({error!r}).") from None
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise InvalidInput(f"Candidate {index} from the engine has no COCO RLE mask.")
    if len(bbox) != 4 or rank < 0 or area < 0:
        raise InvalidInput(f"Candidate {index} from the engine has a bad box, rank or area.")
    finite = [score, *bbox, *components.values()]
    if not all(math.isfinite(v) for v in finite):
        raise InvalidInput(
            f"Candidate {index} from the engine has a score, box or component that is not finite."
        )
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return Candidate(
        job_id=job_id,
        rank=rank,
        rle={"size": [int(v) for v in rle["size"]], "counts": counts},
        bbox_xyxy=bbox,
        area=area,
        score=score,
        components=components,
        partial=partial,
    )
