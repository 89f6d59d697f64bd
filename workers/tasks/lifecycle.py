"""The shared life of a task's work: claim, heartbeat while the body runs, finish or fail in words, retry.

Every kind of queued work (segmentation jobs, refine requests, benchmark shards) is run by ``run_work``
with a ``Lifecycle`` that names the kind's services (``server.ris.services.work`` holds the rules they
share):

1. claim the row (``None``: not this delivery's to run; the task returns ``"skipped"``);
2. run the body while a ``Heartbeat`` thread beats every quarter of the kind's stale time (1 s to 60 s):
   a live worker's row never looks lost to the reconciler, however long the engine works, and a row that
   stops being this attempt's (a job cancelled, a refine expired, a shard requeued by ``--resume`` or
   taken over) is noticed: ``Work.stopped`` turns True and the body writes nothing;
   The body also runs inside ``workers.engine.core.meter.cancellation``: the engine's ``checkpoint`` between
   batches asks (at most once per ``CANCEL_POLL_SECONDS``) whether the row is still this attempt's, by the
   kind's heartbeat service, so Cancel stops a running engine within seconds (``CancelledError``) and the
   worker is free for the next job; the task returns ``"cancelled"`` and writes nothing. Background work
   (``Lifecycle.background``: a background-lane job, a benchmark shard) also runs inside
   ``workers.tasks.yielding.background_yielding``: the same checkpoints pause while interactive work runs
   (``Work.yielded`` tells the body how long it paused);
3. the body writes its result through its kind's service (which checks the attempt again). An error
   fails the row with the error in words (``error_in_words``). An expected error (the engine's, bad input,
   a time limit) is logged in one line; an unexpected one with its traceback, once.

When the database cannot be reached (at the claim, in the body, or while failing) nothing is decided:
the task is retried with capped exponential backoff (2 s, 4 s, ... at most 120 s, ``DB_RETRY_MAX``
times). The retry is the same message (same task id), so its claim takes the row over as a redelivery.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, connections

from workers.engine.core.errors import CancelledError
from workers.engine.core.meter import cancellation
from workers.engine.core.yielding import YieldStats
from workers.tasks import engine_access
from workers.tasks.yielding import background_yielding

logger = logging.getLogger(__name__)

DB_ERRORS = (OperationalError, InterfaceError)
CANCEL_POLL_SECONDS = 1.0
DB_RETRY_MAX = 8
DB_RETRY_BASE_SECONDS = 2.0
DB_RETRY_CAP_SECONDS = 120.0


def db_backoff(retries: int) -> float:
    """Seconds before retry number ``retries + 1`` of a task that could not reach the database: 2, 4, 8, ... 120."""
    return min(DB_RETRY_CAP_SECONDS, DB_RETRY_BASE_SECONDS * 2**retries)


def heartbeat_interval(stale_seconds: float) -> float:
    """Seconds between heartbeats: a quarter of the stale time, between 1 s and 60 s."""
    return max(1.0, min(60.0, float(stale_seconds) / 4))


class WorkStopped(Exception):  # noqa: N818  (a signal, not an error)
    """Raised by a body that noticed (``Work.stopped``) its row is no longer its to run; nothing more is written."""


def error_is_expected(error: BaseException, extra: tuple[type[BaseException], ...] = ()) -> bool:
    """True for errors that are the input's or the setup's fault, logged without a traceback: engine and
    dataset errors, the server's ``RisError`` (a missing image file, a malformed result), the soft time
    limit, memory exhaustion, and a kind's ``extra`` types."""
    from server.ris.errors import RisError

    known = (*engine_access.expected_errors(), RisError, SoftTimeLimitExceeded, MemoryError, *extra)
    return isinstance(error, known)


def error_in_words(error: BaseException, *, what: str = "job") -> str:
    """The error as the user reads it on the row (``what``: the work in words, "job", "refine request", ...).

    Engine, dataset and server errors are already in words and are given as they are; the soft time limit
    and memory exhaustion say what to change; anything else is named, with a pointer to the worker log.
    """
    from server.ris.errors import RisError

    if isinstance(error, (*engine_access.expected_errors(), RisError)):
        return str(error)
    if isinstance(error, SoftTimeLimitExceeded):
        return (
            f"The {what} took longer than its time limit ({settings.CELERY_TASK_SOFT_TIME_LIMIT} s) and was "
            "stopped. Give it less to do (a smaller image, fewer proposals, fewer images per shard) or raise "
            "RIS_JOB_SOFT_TIME_LIMIT."
        )
    if isinstance(error, MemoryError):
        return f"The worker ran out of memory on this {what}. Try a smaller image or a lighter pipeline."
    text = str(error).strip()
    return (
        f"Unexpected {type(error).__name__}" + (f": {text}" if text else "") + " (details in the worker log)."
    )


class Heartbeat:
    """A thread that calls ``beat()`` every ``interval`` seconds while the block runs.

    ``beat`` records a heartbeat on the row and answers False once the row is no longer this attempt's;
    ``stopped`` then turns True and the thread ends. A database error on one beat is logged and the next
    beat tries again. ``what`` names the work in the log ("Job 12").
    """

    def __init__(self, beat: Callable[[], bool], *, interval: float, what: str) -> None:
        self.beat = beat
        self.interval = interval
        self.what = what
        self.stopped = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{what} heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._done.set()
        self._thread.join(timeout=self.interval + 10)

    def _run(self) -> None:
        try:
            while not self._done.wait(self.interval):
                try:
                    if not self.beat():
                        self.stopped = True
                        logger.info(
                            "%s is no longer running under this attempt (cancelled, expired or taken over); "
                            "its result will not be written",
                            self.what,
                        )
                        return
                except DB_ERRORS as error:
                    logger.warning("Heartbeat of %s could not reach the database (%s)", self.what, error)
                    connections.close_all()
        finally:
            connections.close_all()  # this thread's own connections


@dataclass
class Work:
    """What a body is given: the claimed ``row`` (its ``attempts`` is this attempt), the heartbeat,
    ``notes`` it fills as it goes (a job's timings), which are stored with a failure too, and for
    background work ``yielded``: the live pauses of its yielding block (None for interactive work)."""

    row: Any
    heartbeat: Heartbeat
    notes: dict[str, Any] = field(default_factory=dict)
    yielded: YieldStats | None = None

    @property
    def attempt(self) -> int:
        return int(self.row.attempts)

    @property
    def stopped(self) -> bool:
        """True once the heartbeat found the row no longer this attempt's (cancelled, expired, taken over)."""
        return self.heartbeat.stopped


@dataclass(frozen=True)
class Lifecycle:
    """One kind of work as the runner sees it: its services, called with keyword arguments.

    Attributes:
        label: the kind in words, capitalised, for the log ("Job", "Refine request", "Benchmark shard").
        claim: ``(pk, worker, task_id) -> row | None``, the kind's claim service.
        beat: ``(pk, attempt) -> bool``, the kind's heartbeat service.
        fail: ``(work, words) -> None``: stores the error in words on the row (under the attempt).
        stale_seconds: the kind's stale time; heartbeats come four times as often.
        words: ``(row, words) -> str``: the error as stored on the row (a kind's prefix).
        expected: more error types the kind treats as expected (logged in one line).
        interrupted: the outcome when the engine stops at a checkpoint because the row is no longer this
            attempt's: ``"cancelled"`` (a job's Cancel), ``"stopped"`` for a shard (requeued: its next message
            goes on from the images already stored).
        background: ``(row) -> bool``: True for background work, which yields to interactive work at the
            engine's checkpoints (``workers.tasks.yielding``).
    """

    label: str
    claim: Callable[..., Any]
    beat: Callable[..., bool]
    fail: Callable[[Work, str], Any]
    stale_seconds: Callable[[], float]
    words: Callable[[Any, str], str] = lambda row, words: words
    expected: tuple[type[BaseException], ...] = ()
    interrupted: str = "cancelled"
    background: Callable[[Any], bool] = lambda row: False


def run_work(task: Any, kind: Lifecycle, pk: int, body: Callable[[Work], str]) -> str:
    """Claim row ``pk`` of ``kind``, run ``body`` under a heartbeat, fail the row in words if it raises.

    ``task`` is the bound Celery task (its request gives the worker's name, the message id and the retry
    count). Returns the body's outcome, ``"skipped"`` (not claimable), ``"stopped"`` (the body raised
    ``WorkStopped``) or ``"failed"``. Raises Celery's ``Retry`` when the database is unavailable.
    """
    worker = str(task.request.hostname or socket.gethostname())
    task_id = str(task.request.id or "")
    try:
        row = kind.claim(pk=pk, worker=worker, task_id=task_id)
        if row is None:
            logger.info("%s %s is not claimable (taken, finished or cancelled); skipping", kind.label, pk)
            return "skipped"
        what = f"{kind.label} {pk}"
        heartbeat = Heartbeat(
            lambda: bool(kind.beat(pk=pk, attempt=row.attempts)),
            interval=heartbeat_interval(kind.stale_seconds()),
            what=what,
        )
        work = Work(row=row, heartbeat=heartbeat)

        def cancelled() -> bool:
            if work.stopped:
                return True
            try:
                return not kind.beat(pk=pk, attempt=row.attempts)
            except DB_ERRORS as error:  # unknown: keep working; the heartbeat thread tries again
                logger.warning("Cancellation check of %s could not reach the database (%s)", what, error)
                return False

        yields = background_yielding(what) if kind.background(row) else nullcontext()
        try:
            with heartbeat, cancellation(cancelled, min_interval_s=CANCEL_POLL_SECONDS), yields as stats:
                work.yielded = stats
                return body(work)
        except CancelledError:
            logger.info(
                "%s stopped between two batches: it was cancelled (or taken over); nothing written", what
            )
            return kind.interrupted
        except WorkStopped:
            logger.info("%s stopped: it is no longer this worker's (attempt %s)", what, work.attempt)
            return "stopped"
        except DB_ERRORS:
            raise
        except Exception as error:
            words = kind.words(row, error_in_words(error, what=kind.label.lower()))
            if error_is_expected(error, kind.expected):
                logger.warning("%s failed: %s", what, words)
            else:
                logger.exception("%s failed: %s", what, words)
            kind.fail(work, words)
            return "failed"
    except DB_ERRORS as error:
        # Celery's Django fixup closes the broken connection before the retry runs.
        logger.warning("Database unavailable for %s %s (%s); retrying", kind.label.lower(), pk, error)
        raise task.retry(exc=error, countdown=db_backoff(task.request.retries)) from error
