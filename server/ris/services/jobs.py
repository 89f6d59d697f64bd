"""The life of a segmentation job: dispatch, claim, progress, success, failure, cancel, retry, reconcile.

The database row is the truth; a queue message carries only the job id and may arrive twice, late, or
never. So:

- ``job_claim`` is a conditional UPDATE (queued -> running): of two workers given one job, one wins.
  A running job may also be claimed again by the redelivery of its own message (same Celery task id:
  the worker that had it died before acknowledging) or when its heartbeat is older than
  ``RIS_JOB_STALE_SECONDS`` (its worker is gone).
- ``job_succeed`` writes all candidates in one transaction, replacing any earlier ones, and only while
  the job is still running: a cancelled job stays cancelled, a finished one is not written twice.
- ``jobs_reconcile`` (run periodically) sends again what the broker may have lost: jobs never
  dispatched; every queued job dispatched more than ``RESEND_GRACE_SECONDS`` ago when the broker's job
  queue is empty (a broker restarted empty loses nothing for longer than one reconciler interval);
  queued jobs dispatched longer ago than the stale time; running jobs without a heartbeat (after
  ``RIS_JOB_MAX_ATTEMPTS`` lost workers such a job fails in words instead of looping). A message sent
  twice is harmless: the second delivery finds the job claimed and is skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from server.ris.errors import Conflict, InvalidInput
from server.ris.models import Candidate, JobState, SegmentationJob
from server.ris.services.dispatch import JOB_QUEUE, RUN_SEGMENTATION_JOB, broker_queue_size, task_send

logger = logging.getLogger(__name__)

ERROR_MAX_CHARS = 4000
RESEND_GRACE_SECONDS = 30


def _stale_seconds() -> int:
    return int(settings.RIS_JOB_STALE_SECONDS)


def _max_attempts() -> int:
    return int(getattr(settings, "RIS_JOB_MAX_ATTEMPTS", 3))


def job_dispatch(*, job_id: int) -> bool:
    """Send the job's message now and record when; False if the broker refused (reconciled later)."""
    message_id = task_send(RUN_SEGMENTATION_JOB, args=[job_id])
    if message_id is None:
        return False
    # Only a job still queued records the message: a job claimed meanwhile keeps its claimer's message
    # id, so this later copy of the message finds it taken and is skipped.
    SegmentationJob.objects.filter(pk=job_id, state=JobState.QUEUED).update(
        dispatched_at=timezone.now(), celery_task_id=message_id
    )
    return True


def job_enqueue_on_commit(*, job_id: int) -> None:
    """Dispatch the job once the surrounding transaction commits (at once outside a transaction)."""
    transaction.on_commit(partial(job_dispatch, job_id=job_id))


def job_claim(*, job_id: int, worker: str, task_id: str = "") -> SegmentationJob | None:
    """Mark the job running for ``worker`` and count the attempt; None if it is not this worker's to run.

    Returns the job (with its expression and image loaded), or None when the job does not exist, is
    finished or cancelled, or is running under a live worker. The claim records ``task_id`` as the job's
    message: only a redelivery of the very message that claimed it may take a running job over, never
    another copy sent by the reconciler while the job waited (that would run it twice at once).
    """
    now = timezone.now()
    takeover = Q(state=JobState.RUNNING, heartbeat_at__lt=now - timedelta(seconds=_stale_seconds()))
    if task_id:
        takeover |= Q(state=JobState.RUNNING, celery_task_id=task_id)
    claimed = (
        SegmentationJob.objects.filter(pk=job_id)
        .filter(Q(state=JobState.QUEUED) | takeover)
        .update(
            state=JobState.RUNNING,
            attempts=F("attempts") + 1,
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            worker=worker[:255],
            progress=0.0,
            error="",
            **({"celery_task_id": task_id[:64]} if task_id else {}),
        )
    )
    if claimed == 0:
        return None
    return SegmentationJob.objects.select_related("expression__image").get(pk=job_id)


def job_progress(*, job_id: int, progress: float) -> bool:
    """Record progress (0-1) and a heartbeat; False if the job is no longer running (e.g. cancelled)."""
    value = min(1.0, max(0.0, float(progress)))
    updated = SegmentationJob.objects.filter(pk=job_id, state=JobState.RUNNING).update(
        progress=value, heartbeat_at=timezone.now()
    )
    return updated == 1


def job_succeed(
    *,
    job_id: int,
    candidates: Sequence[Mapping[str, Any]],
    timings: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> bool:
    """Write the job's candidates (replacing any earlier ones) and mark it succeeded, in one transaction.

    ``candidates``: dicts as ``workers.engine.core.types.Candidate.to_json()`` gives them (rank, rle,
    bbox_xyxy, area, score, components). ``config``: the full config the worker resolved and ran with.
    Returns False, writing nothing, when the job is no longer running (cancelled, or already finished
    by another delivery of its message). Raises ``InvalidInput`` for a malformed candidate.
    """
    rows = [_candidate_row(job_id, item, index) for index, item in enumerate(candidates)]
    ranks = [row.rank for row in rows]
    if len(set(ranks)) != len(ranks):
        raise InvalidInput(f"The engine returned candidates with repeated ranks: {sorted(ranks)}.")
    with transaction.atomic():
        job = SegmentationJob.objects.select_for_update().get(pk=job_id)
        if job.state != JobState.RUNNING:
            logger.info("Job %s is %s; its result from this attempt is discarded", job_id, job.state)
            return False
        Candidate.objects.filter(job_id=job_id).delete()
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


def job_fail(*, job_id: int, error: str, timings: Mapping[str, Any] | None = None) -> bool:
    """Mark a queued or running job failed with ``error`` in words; False if it had already ended."""
    message = (error or "The job failed without a message.").strip()[:ERROR_MAX_CHARS]
    values: dict[str, Any] = {"state": JobState.FAILED, "error": message, "finished_at": timezone.now()}
    if timings is not None:
        values["timings"] = dict(timings)
    updated = SegmentationJob.objects.filter(pk=job_id, state__in=[JobState.QUEUED, JobState.RUNNING]).update(
        **values
    )
    return updated == 1


def job_cancel(*, job: SegmentationJob) -> SegmentationJob:
    """Cancel a queued or running job (a running one's result is discarded when it arrives)."""
    updated = SegmentationJob.objects.filter(pk=job.pk, state__in=[JobState.QUEUED, JobState.RUNNING]).update(
        state=JobState.CANCELLED, finished_at=timezone.now()
    )
    job.refresh_from_db()
    if updated == 0:
        raise Conflict(f"Job {job.pk} is {job.state}; only queued or running jobs can be cancelled.")
    return job


def job_retry(*, job: SegmentationJob) -> SegmentationJob:
    """Queue a failed or cancelled job again and send it to a worker on commit."""
    with transaction.atomic():
        updated = SegmentationJob.objects.filter(
            pk=job.pk, state__in=[JobState.FAILED, JobState.CANCELLED]
        ).update(
            state=JobState.QUEUED,
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
        job_enqueue_on_commit(job_id=job.pk)
    return job


@dataclass
class ReconcileReport:
    """What one reconciler pass did: job ids sent again, and ids failed after too many lost workers."""

    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def jobs_reconcile(*, now: datetime | None = None) -> ReconcileReport:
    """Send again the jobs whose message may be lost; fail those whose workers died too often."""
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=_stale_seconds())
    grace_before = now - timedelta(seconds=min(RESEND_GRACE_SECONDS, _stale_seconds()))
    report = ReconcileReport()

    no_heartbeat = Q(heartbeat_at__lt=stale_before) | Q(
        heartbeat_at__isnull=True, started_at__lt=stale_before
    )
    lost_workers = SegmentationJob.objects.filter(no_heartbeat, state=JobState.RUNNING)
    for job in lost_workers.only("id", "attempts"):
        if job.attempts >= _max_attempts():
            message = (
                f"The worker running this job stopped responding {job.attempts} times "
                f"(no heartbeat for {_stale_seconds()} s); it was given up. Retry it, or try a smaller image "
                "or another pipeline."
            )
            if SegmentationJob.objects.filter(no_heartbeat, pk=job.pk, state=JobState.RUNNING).update(
                state=JobState.FAILED, error=message, finished_at=now
            ):
                report.failed.append(job.pk)
            continue
        if SegmentationJob.objects.filter(no_heartbeat, pk=job.pk, state=JobState.RUNNING).update(
            state=JobState.QUEUED, worker="", progress=0.0
        ):
            report.requeued.append(job.pk)

    lost = Q(dispatched_at__isnull=True, created_at__lt=grace_before) | Q(dispatched_at__lt=stale_before)
    waiting = SegmentationJob.objects.filter(state=JobState.QUEUED, dispatched_at__lt=grace_before)
    if waiting.exists() and broker_queue_size(JOB_QUEUE) == 0:
        lost |= Q(dispatched_at__lt=grace_before)  # the broker holds none of them: it lost them
    lost_messages = SegmentationJob.objects.filter(lost, state=JobState.QUEUED)
    report.requeued.extend(
        pk for pk in lost_messages.values_list("id", flat=True) if pk not in report.requeued
    )
    for job_id in report.requeued:
        job_dispatch(job_id=job_id)
    if report.requeued or report.failed:
        logger.info("Reconciler: sent again %s, failed %s", report.requeued, report.failed)
    return report


def _candidate_row(job_id: int, item: Mapping[str, Any], index: int) -> Candidate:
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
    )
