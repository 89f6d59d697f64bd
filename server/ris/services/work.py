"""One life for every kind of queued work: dispatch, claim, heartbeat, fail, and the reconciler's rules.

Three kinds of rows are worked on by Celery workers: segmentation jobs (``server.ris``), click-to-refine
requests (``server.web``) and benchmark shards (``server.benchmarks``). The row is the truth about its
work; a queue message carries only the row's id and may arrive twice, late, or never. One set of rules,
written here once, serves the three kinds (each kind describes itself with a ``WorkKind``):

- ``work_dispatch`` sends the message and records when, and its id, while the row is queued.
- ``work_claim`` is a conditional UPDATE to running that counts the attempt. It takes a row that is
  queued; or running when the message is a redelivery of the very message that claimed it (same Celery
  task id: the worker that had it died before acknowledging); or running with a heartbeat older than the
  kind's stale time (its worker is gone). Of two workers given one row, one wins. A copy of the message
  sent by the reconciler while the row waited has another id, so it never takes over a live worker's row.
- The attempt number the claim returns fences everything after it: ``work_heartbeat`` and the final
  writes touch the row only while it is running under that attempt, so a worker whose row was
  cancelled, expired or taken over by another delivery writes nothing.
- ``work_reconcile`` (the periodic reconciler) handles what the broker or a worker lost. A running row
  without a heartbeat for the stale time lost its worker: it is queued and sent again, or, once it has
  had ``RIS_JOB_MAX_ATTEMPTS`` attempts, failed with the reason in words instead of looping. A queued row
  whose message may be lost is sent again: never sent; sent longer ago than the stale time; or sent more
  than ``RESEND_GRACE_SECONDS`` ago while its broker queue is empty (a broker restarted empty loses
  nothing for longer than one reconciler interval). A message sent twice is harmless: the second
  delivery finds the row claimed and is skipped.

Nothing here imports torch or ``workers.engine``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from server.ris.services import dispatch

logger = logging.getLogger(__name__)

QUEUED = "queued"
RUNNING = "running"
FAILED = "failed"
ERROR_MAX_CHARS = 4000
RESEND_GRACE_SECONDS = 30


def max_attempts() -> int:
    """Attempts after which a row whose worker was lost is failed, not sent again (``RIS_JOB_MAX_ATTEMPTS``)."""
    return int(getattr(settings, "RIS_JOB_MAX_ATTEMPTS", 3))


def job_stale_seconds() -> float:
    """Seconds without a heartbeat after which a running job or shard lost its worker (``RIS_JOB_STALE_SECONDS``)."""
    return float(settings.RIS_JOB_STALE_SECONDS)


@dataclass(frozen=True)
class WorkKind:
    """How one kind of work row is stored and sent, for the shared rules of this module.

    The model has ``state`` (with the values ``queued``, ``running`` and ``failed``), ``attempts``,
    ``worker``, ``celery_task_id``, ``dispatched_at``, ``started_at``, ``heartbeat_at``, ``finished_at``
    and ``error``.

    Attributes:
        label: the kind in words, singular ("job", "refine request", "benchmark shard").
        model: the Django model of the rows.
        task_name: the Celery task that works on one row (its only argument is the row's id).
        stale_seconds: seconds without a heartbeat after which a running row's worker is taken to be gone.
        words_given_up: the error, in words, of a row failed after ``max_attempts()`` lost workers.
        created_field: when the row was made (a lookup path), to find messages never sent.
        queue_field: a field holding the row's own queue name (blank: the task's routed queue).
        related: ``select_related`` paths loaded with a claimed row.
        resets: field values set when the row is claimed or queued again (stale progress, an old error).
    """

    label: str
    model: type[models.Model]
    task_name: str
    stale_seconds: Callable[[], float]
    words_given_up: Callable[[Any], str]
    created_field: str = "created_at"
    queue_field: str | None = None
    related: tuple[str, ...] = ()
    resets: Mapping[str, Any] = field(default_factory=dict)

    def routed_queue(self) -> str:
        """The queue the task's messages go to when the row names none (``CELERY_TASK_ROUTES``)."""
        route = dict(getattr(settings, "CELERY_TASK_ROUTES", {}) or {}).get(self.task_name) or {}
        return str(route.get("queue") or getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "celery"))

    def queue_of(self, row: models.Model) -> str:
        """The broker queue of ``row``'s messages."""
        own = str(getattr(row, self.queue_field) or "") if self.queue_field else ""
        return own or self.routed_queue()


def work_dispatch(kind: WorkKind, *, pk: int, queue: str | None = None) -> bool:
    """Send the message of row ``pk`` now and record when; False if the broker refused (reconciled later).

    Only a row still queued records the message: a row claimed meanwhile keeps its claimer's message id,
    so this later copy of the message finds it taken and is skipped.
    """
    message_id = dispatch.task_send(kind.task_name, args=[pk], queue=queue or None)
    if message_id is None:
        return False
    kind.model.objects.filter(pk=pk, state=QUEUED).update(
        dispatched_at=timezone.now(), celery_task_id=message_id[:64]
    )
    return True


def work_claim(kind: WorkKind, *, pk: int, worker: str, task_id: str = "") -> Any | None:
    """Mark row ``pk`` running for ``worker`` and count the attempt; None if it is not this worker's to run.

    Takes a queued row; a running row when ``task_id`` is the id of the message that claimed it (a
    redelivery); a running row whose heartbeat is older than the kind's stale time. Returns the row (with
    ``kind.related`` loaded; its ``attempts`` is this attempt's number), or None when the row does not
    exist, is finished or cancelled, or is running under a live worker. Records ``task_id`` as the row's
    message.
    """
    now = timezone.now()
    takeover = Q(state=RUNNING, heartbeat_at__lt=now - timedelta(seconds=kind.stale_seconds()))
    if task_id:
        takeover |= Q(state=RUNNING, celery_task_id=task_id)
    worker_chars = kind.model._meta.get_field("worker").max_length or 255
    claimed = (
        kind.model.objects.filter(pk=pk)
        .filter(Q(state=QUEUED) | takeover)
        .update(
            state=RUNNING,
            attempts=F("attempts") + 1,
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            worker=worker[:worker_chars],
            **dict(kind.resets),
            **({"celery_task_id": task_id[:64]} if task_id else {}),
        )
    )
    if claimed == 0:
        return None
    return kind.model.objects.select_related(*kind.related).get(pk=pk)


def work_running(kind: WorkKind, *, pk: int, attempt: int | None = None) -> models.QuerySet:
    """Row ``pk`` while it is running (under attempt ``attempt`` when given): the fence of every write."""
    rows = kind.model.objects.filter(pk=pk, state=RUNNING)
    return rows if attempt is None else rows.filter(attempts=attempt)


def work_heartbeat(kind: WorkKind, *, pk: int, attempt: int | None = None, **values: Any) -> bool:
    """Record a heartbeat (and ``values``) on row ``pk``; False if it is no longer running under ``attempt``."""
    return work_running(kind, pk=pk, attempt=attempt).update(heartbeat_at=timezone.now(), **values) == 1


def work_fail(kind: WorkKind, *, pk: int, error: str, attempt: int | None = None, **values: Any) -> bool:
    """Mark row ``pk`` failed with ``error`` in words (and ``values``); False if it had already ended.

    Without ``attempt`` a queued or running row is failed; with it, only the row running under that attempt.
    """
    message = (error or f"The {kind.label} failed without a message.").strip()[:ERROR_MAX_CHARS]
    rows = (
        kind.model.objects.filter(pk=pk, state__in=[QUEUED, RUNNING])
        if attempt is None
        else work_running(kind, pk=pk, attempt=attempt)
    )
    return rows.update(state=FAILED, error=message, finished_at=timezone.now(), **values) == 1


@dataclass
class ReconcileReport:
    """What one reconciler pass did to one kind: ids sent again, and ids failed after too many lost workers."""

    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def work_reconcile(kind: WorkKind, *, now: datetime | None = None, scope: Q | None = None) -> ReconcileReport:
    """Send again the rows of ``kind`` whose message or worker was lost; fail those whose workers died too often.

    ``scope`` limits the pass to some rows (benchmark shards of running runs). Returns what was done.
    """
    now = now or timezone.now()
    stale = kind.stale_seconds()
    stale_before = now - timedelta(seconds=stale)
    grace_before = now - timedelta(seconds=min(RESEND_GRACE_SECONDS, stale))
    rows = kind.model.objects.filter(scope) if scope is not None else kind.model.objects.all()
    report = ReconcileReport()

    no_heartbeat = Q(heartbeat_at__lt=stale_before) | Q(
        heartbeat_at__isnull=True, started_at__lt=stale_before
    )
    for row in rows.filter(no_heartbeat, state=RUNNING).select_related(*kind.related):
        lost = kind.model.objects.filter(no_heartbeat, pk=row.pk, state=RUNNING)
        if row.attempts >= max_attempts():
            if lost.update(state=FAILED, error=kind.words_given_up(row)[:ERROR_MAX_CHARS], finished_at=now):
                report.failed.append(row.pk)
            continue
        if lost.update(state=QUEUED, worker="", **dict(kind.resets)):
            report.requeued.append(row.pk)

    message_lost = Q(dispatched_at__isnull=True, **{f"{kind.created_field}__lt": grace_before}) | Q(
        dispatched_at__lt=stale_before
    )
    waiting = rows.filter(state=QUEUED, dispatched_at__lt=grace_before)
    for queue, in_queue in _queues_of(kind, waiting):
        if dispatch.broker_queue_size(queue) == 0:  # the broker holds none of them: it lost them
            message_lost |= Q(dispatched_at__lt=grace_before) & in_queue
    resend = rows.filter(message_lost, state=QUEUED).order_by("pk")
    report.requeued.extend(pk for pk in resend.values_list("pk", flat=True) if pk not in report.requeued)

    queues = _row_queues(kind, report.requeued)
    for pk in report.requeued:
        work_dispatch(kind, pk=pk, queue=queues.get(pk))
    if report.requeued or report.failed:
        logger.info("Reconciler: sent again %s, failed %s (%ss)", report.requeued, report.failed, kind.label)
    return report


def _queues_of(kind: WorkKind, waiting: models.QuerySet) -> list[tuple[str, Q]]:
    """The broker queues the ``waiting`` rows' messages are in, each with the filter of its rows."""
    if not waiting.exists():
        return []
    if kind.queue_field is None:
        return [(kind.routed_queue(), Q())]
    names = sorted(set(waiting.values_list(kind.queue_field, flat=True)))
    return [(name or kind.routed_queue(), Q(**{kind.queue_field: name})) for name in names]


def _row_queues(kind: WorkKind, pks: list[int]) -> dict[int, str]:
    """The queue each of rows ``pks`` names (rows that name none are left out: their task is routed)."""
    if kind.queue_field is None or not pks:
        return {}
    named = kind.model.objects.filter(pk__in=pks).exclude(**{kind.queue_field: ""})
    return dict(named.values_list("pk", kind.queue_field))
