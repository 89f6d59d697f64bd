"""One discipline for every kind of queued work: segmentation jobs, refine requests and benchmark shards.

Each test runs for the three kinds (``kind`` is parametrised): the Celery tasks run in-process
(``apply``, with the message id a real delivery would carry) against a fake engine put in through the one
door the tasks use (``workers.tasks.engine_access.engine_get``). What is checked, per kind:

- a message delivered twice runs the work once; a redelivery of the message that claimed a running row
  takes it over, any other copy is skipped; a row whose heartbeat is stale is taken over by any message;
- the reconciler queues and sends again a row whose worker vanished, and fails it in words after the
  maximum number of attempts; it sends again a message the broker lost;
- a database outage in the claim or in the body is retried with backoff, and the retry finishes the work;
- errors are stored in words, expected ones logged in one line, unexpected ones with one traceback;
- a heartbeat beats while the body runs, and a row that stops being the worker's meanwhile (a job
  cancelled, a refine expired, a shard requeued by ``--resume``) is noticed and nothing is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.db import OperationalError
from django.db.models import Model
from django.utils import timezone

from server.benchmarks import services as benchmark_services
from server.benchmarks.models import BenchmarkRun, BenchmarkSentenceResult, BenchmarkShard
from server.ris.models import Candidate, SegmentationJob
from server.ris.services import dispatch, job_claim, job_heartbeat
from server.ris.services.rle import rle_from_mask
from server.web.models import RefineRequest
from server.web.services.refine import refine_request_claim, refine_request_create, refine_request_heartbeat
from tests.benchmark.oracle import ColourOracleEngine
from tests.server.factories import expression_make, image_make, job_of
from workers.engine.core.errors import BadInputError
from workers.tasks import engine_access, lifecycle
from workers.tasks.benchmark import run_benchmark_shard
from workers.tasks.reconcile import reconcile_jobs
from workers.tasks.refine import refine_mask
from workers.tasks.segmentation import run_segmentation_job

pytestmark = pytest.mark.django_db

KINDS = ["job", "refine", "shard"]
LONG_AGO = timedelta(hours=3)


class FakeEngine(ColourOracleEngine):
    """The colour oracle (``predict``) plus ``refine`` and ``prepare``; ``during`` runs inside each model
    call (to act while the body runs), ``error`` is raised from it."""

    def __init__(self) -> None:
        super().__init__()
        self.refines: list[list[tuple[float, float]]] = []
        self.error: BaseException | None = None
        self.during: Callable[[], None] | None = None

    def _work(self) -> None:
        if self.during is not None:
            self.during()
        if self.error is not None:
            raise self.error

    def predict(self, image, expressions, *, pipeline, config=None, top_k=None, **callbacks):
        answer = super().predict(
            image, expressions, pipeline=pipeline, config=config, top_k=top_k, **callbacks
        )
        self._work()
        return answer

    def refine(self, image, *, points_xy, labels, box_xyxy=None, mask_rle=None):
        self.refines.append(list(points_xy))
        self._work()
        mask = np.zeros(image.rgb.shape[:2], dtype=bool)
        x, y = (int(v) for v in points_xy[0])
        mask[max(0, y - 2) : y + 2, max(0, x - 2) : x + 2] = True
        return rle_from_mask(mask)

    def prepare(self, image, *, pipeline, config=None):
        pass

    def runs(self) -> int:
        """Model calls made so far (predicts and refines)."""
        return len(self.calls) + len(self.refines)


@dataclass
class Kind:
    """One kind of work as these tests drive it."""

    name: str
    task: Any
    model: type[Model]
    done: str
    make: Callable[[], int]
    claim: Callable[..., Any]
    beat: Callable[..., bool]
    report_key: str
    prefix: str = ""

    def row(self, pk: int) -> Any:
        return self.model.objects.get(pk=pk)

    def run(self, pk: int, message: str) -> str:
        return self.task.apply(args=[pk], task_id=message).get()

    def set(self, pk: int, **values: Any) -> None:
        self.model.objects.filter(pk=pk).update(**values)


@pytest.fixture(scope="session")
def refer_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.engine.data.synthetic import write_synthetic_refcoco

    root = tmp_path_factory.mktemp("work-refer")
    write_synthetic_refcoco(root, 2, seed=3)
    return root


def _make_shard(refer_root: Path) -> int:
    spec = {
        "dataset": "refcoco",
        "split": "val",
        "split_by": "unc",
        "pipelines": ["oracle"],
        "data_root": str(refer_root),
    }
    run = benchmark_services.run_create(spec=spec, distributed=True)
    groups = engine_access.benchmark_spec(spec).open_dataset().images()
    (shard,) = benchmark_services.shards_create(
        run=run, shards=[([g.image_id for g in groups], sum(len(g.sentences) for g in groups))]
    )
    return shard.pk


@pytest.fixture
def engine(monkeypatch) -> FakeEngine:
    fake = FakeEngine()
    monkeypatch.setattr(engine_access, "engine_get", lambda: fake)
    return fake


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, list, str]]:
    """Messages handed to the broker: ``(task name, args, message id)``."""
    calls: list[tuple[str, list, str]] = []

    def send(name, *, args, priority=None, queue=None):
        calls.append((name, list(args), f"resent-{len(calls) + 1}"))
        return calls[-1][2]

    monkeypatch.setattr(dispatch, "task_send", send)
    return calls


@pytest.fixture(params=KINDS)
def kind(request, project, user, refer_root) -> Kind:
    image = image_make(project, user, width=30, height=20)
    if request.param == "job":
        return Kind(
            name="job",
            task=run_segmentation_job,
            model=SegmentationJob,
            done="succeeded",
            make=lambda: job_of(expression_make(image, user, "the red square")).pk,
            claim=lambda pk, worker, task_id: job_claim(job_id=pk, worker=worker, task_id=task_id),
            beat=lambda pk, attempt: job_heartbeat(job_id=pk, attempt=attempt),
            report_key="jobs",
        )
    if request.param == "refine":
        return Kind(
            name="refine",
            task=refine_mask,
            model=RefineRequest,
            done="succeeded",
            make=lambda: (
                refine_request_create(image=image, requested_by=user, points_xy=[[10, 8]], labels=[1]).pk
            ),
            claim=lambda pk, worker, task_id: refine_request_claim(
                request_id=pk, worker=worker, task_id=task_id
            ),
            beat=lambda pk, attempt: refine_request_heartbeat(request_id=pk, attempt=attempt),
            report_key="refine_requests",
            prefix="SAM could not refine the mask: ",
        )
    return Kind(
        name="shard",
        task=run_benchmark_shard,
        model=BenchmarkShard,
        done="done",
        make=lambda: _make_shard(refer_root),
        claim=lambda pk, worker, task_id: benchmark_services.shard_claim(
            shard_id=pk, worker=worker, task_id=task_id
        ),
        beat=lambda pk, attempt: benchmark_services.shard_heartbeat(shard_id=pk, attempt=attempt),
        report_key="shards",
    )


def _stale_for(kind: Kind) -> timedelta:
    from server.ris.services.work import job_stale_seconds
    from server.web.services.refine import refine_stale_seconds

    seconds = refine_stale_seconds() if kind.name == "refine" else job_stale_seconds()
    return timedelta(seconds=seconds + 5)


def _result_count(kind: Kind, pk: int) -> int:
    """Results the work wrote: candidates of the job, the refined mask, the shard's sentence rows."""
    if kind.name == "job":
        return Candidate.objects.filter(job_id=pk).count()
    if kind.name == "refine":
        return int(kind.row(pk).result_rle is not None)
    return BenchmarkSentenceResult.objects.filter(run=kind.row(pk).run).count()


# -- redelivery ------------------------------------------------------------------------------------


def test_a_message_delivered_twice_runs_the_work_once(kind, engine, sent):
    pk = kind.make()
    assert kind.run(pk, "m-1") == "succeeded"
    row = kind.row(pk)
    assert row.state == kind.done and row.attempts == 1 and row.worker and row.celery_task_id == "m-1"
    calls, results = engine.runs(), _result_count(kind, pk)
    assert calls > 0 and results > 0
    assert kind.run(pk, "m-1") == "skipped"  # the same message again (late ack)
    assert kind.run(pk, "m-2") == "skipped"  # a copy the reconciler sent
    assert engine.runs() == calls and _result_count(kind, pk) == results
    assert kind.row(pk).attempts == 1


def test_only_the_claiming_message_takes_over_a_running_row(kind, engine):
    pk = kind.make()
    assert kind.claim(pk, "w1@gone", "m-1") is not None  # w1 died mid-work, its heartbeat still fresh
    assert kind.run(pk, "m-2") == "skipped"  # another copy: the row may be on a live worker
    assert engine.runs() == 0 and kind.row(pk).attempts == 1
    assert kind.run(pk, "m-1") == "succeeded"  # the redelivery of w1's own message
    row = kind.row(pk)
    assert row.state == kind.done and row.attempts == 2 and not row.worker.startswith("w1@")


def test_a_running_row_with_a_stale_heartbeat_is_taken_over_by_any_message(kind, engine):
    pk = kind.make()
    kind.claim(pk, "w1@gone", "m-1")
    kind.set(pk, heartbeat_at=timezone.now() - _stale_for(kind))
    assert kind.run(pk, "m-9") == "succeeded"
    row = kind.row(pk)
    assert row.state == kind.done and row.attempts == 2 and row.celery_task_id == "m-9"


def test_a_takeover_fences_out_the_first_worker(kind):
    pk = kind.make()
    first = kind.claim(pk, "w1", "m-1")
    kind.set(pk, heartbeat_at=timezone.now() - _stale_for(kind))
    second = kind.claim(pk, "w2", "m-2")
    assert (first.attempts, second.attempts) == (1, 2)
    assert not kind.beat(pk, first.attempts)  # w1's heartbeat now tells it to stop
    assert kind.beat(pk, second.attempts)


# -- the reconciler ----------------------------------------------------------------------------------


def test_a_lost_workers_work_is_run_again(kind, engine, sent):
    pk = kind.make()
    kind.claim(pk, "w1@gone", "m-1")
    kind.set(pk, heartbeat_at=timezone.now() - _stale_for(kind))
    report = reconcile_jobs.apply().get()
    assert report[kind.report_key]["requeued"] == [pk] and report[kind.report_key]["failed"] == []
    row = kind.row(pk)
    assert row.state == "queued" and row.worker == "" and row.dispatched_at is not None
    ((name, args, message),) = sent
    assert name == kind.task.name and args == [pk] and row.celery_task_id == message
    assert kind.run(pk, message) == "succeeded"
    assert kind.row(pk).attempts == 2
    assert reconcile_jobs.apply().get()[kind.report_key]["requeued"] == []


def test_a_lost_workers_work_is_failed_in_words_after_the_max_attempts(kind, settings, sent):
    settings.RIS_JOB_MAX_ATTEMPTS = 2
    pk = kind.make()
    kind.claim(pk, "w1@gone", "m-1")
    kind.set(pk, attempts=2, heartbeat_at=timezone.now() - _stale_for(kind))
    report = reconcile_jobs.apply().get()
    assert report[kind.report_key]["failed"] == [pk] and report[kind.report_key]["requeued"] == []
    row = kind.row(pk)
    assert row.state == "failed" and row.finished_at is not None and sent == []
    assert row.error.startswith(kind.prefix) and "stopped responding 2 times" in row.error, row.error


def test_a_message_the_broker_lost_is_sent_again(kind, sent, monkeypatch):
    monkeypatch.setattr(dispatch, "broker_queue_size", lambda queue: None)  # cannot tell: timeouts decide
    pk = kind.make()
    kind.set(pk, dispatched_at=timezone.now() - _stale_for(kind))
    sent.clear()
    report = reconcile_jobs.apply().get()
    assert report[kind.report_key]["requeued"] == [pk]
    assert [(name, args) for name, args, _ in sent] == [(kind.task.name, [pk])]
    assert kind.row(pk).celery_task_id == sent[0][2]


# -- database outages -------------------------------------------------------------------------------


@pytest.fixture
def backoffs(monkeypatch) -> list[int]:
    """The retry counts the runner asked a backoff for (the backoff itself is made 0 s)."""
    asked: list[int] = []
    monkeypatch.setattr(lifecycle, "db_backoff", lambda retries: asked.append(retries) or 0)
    return asked


def _flaky(monkeypatch, target: Any, name: str, failures: int = 1) -> None:
    original = getattr(target, name)
    left = {"n": failures}

    def flaky(*args, **kwargs):
        if left["n"]:
            left["n"] -= 1
            raise OperationalError("server closed the connection unexpectedly")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, flaky)


def test_the_database_going_away_mid_work_is_retried_and_the_retry_finishes(
    kind, engine, backoffs, monkeypatch
):
    from server.ris import services as ris_services

    if kind.name == "shard":
        _flaky(monkeypatch, benchmark_services, "sentence_results_store")
    else:
        _flaky(monkeypatch, ris_services, "image_load_rgb")
    pk = kind.make()
    assert kind.run(pk, "m-1") == "succeeded"
    assert backoffs == [0]
    row = kind.row(pk)
    assert row.state == kind.done and row.attempts == 2  # the retry is the same message: it took over


def test_the_database_away_at_the_claim_is_retried_with_growing_backoff(kind, engine, backoffs, monkeypatch):
    from server.benchmarks import services as shard_services
    from server.ris import services as ris_services
    from server.web.services import refine as refine_services

    target, name = {
        "job": (ris_services, "job_claim"),
        "refine": (refine_services, "refine_request_claim"),
        "shard": (shard_services, "shard_claim"),
    }[kind.name]
    _flaky(monkeypatch, target, name, failures=3)
    pk = kind.make()
    assert kind.run(pk, "m-1") == "succeeded"
    assert backoffs == [0, 1, 2]  # 2 s, 4 s, 8 s in production (db_backoff)
    assert kind.row(pk).attempts == 1


def test_backoff_doubles_up_to_a_cap():
    from workers.tasks.lifecycle import DB_RETRY_CAP_SECONDS, db_backoff

    assert [db_backoff(n) for n in range(4)] == [2.0, 4.0, 8.0, 16.0]
    assert db_backoff(20) == DB_RETRY_CAP_SECONDS == 120.0


# -- errors in words --------------------------------------------------------------------------------


def test_an_expected_error_is_stored_in_words_and_logged_in_one_line(kind, engine, caplog):
    engine.error = BadInputError("the prompt needs at least one point or a box")
    pk = kind.make()
    with caplog.at_level(logging.INFO, logger="workers.tasks"):
        assert kind.run(pk, "m-1") == "failed"
    row = kind.row(pk)
    assert row.state == "failed" and row.finished_at is not None
    if kind.name == "shard":
        assert row.error == f"shard 0 of run {row.run_id}: the prompt needs at least one point or a box"
    else:
        assert row.error == kind.prefix + "the prompt needs at least one point or a box"
    failures = [
        r for r in caplog.records if "failed" in r.getMessage() and r.name.startswith("workers.tasks")
    ]
    assert len(failures) == 1 and failures[0].levelno == logging.WARNING and failures[0].exc_info is None
    assert row.error in failures[0].getMessage()


def test_an_unexpected_error_is_named_and_logged_with_one_traceback(kind, engine, caplog):
    engine.error = RuntimeError("CUDA out of memory")
    pk = kind.make()
    with caplog.at_level(logging.INFO, logger="workers.tasks"):
        assert kind.run(pk, "m-1") == "failed"
    row = kind.row(pk)
    assert row.error.endswith("Unexpected RuntimeError: CUDA out of memory (details in the worker log).")
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and tracebacks[0].levelno == logging.ERROR


def test_error_in_words():
    from celery.exceptions import SoftTimeLimitExceeded

    from server.ris.errors import StoredFileMissing
    from workers.engine.data.refer import DatasetError
    from workers.tasks.lifecycle import error_in_words, error_is_expected

    assert (
        error_in_words(StoredFileMissing("cat.png is missing from storage"))
        == "cat.png is missing from storage"
    )
    assert error_in_words(DatasetError("refs(unc).p is missing")) == "refs(unc).p is missing"
    assert "took longer than its time limit" in error_in_words(SoftTimeLimitExceeded(), what="refine request")
    assert "The refine request took" in error_in_words(SoftTimeLimitExceeded(), what="refine request")
    assert "ran out of memory on this job" in error_in_words(MemoryError())
    assert error_in_words(KeyError()) == "Unexpected KeyError (details in the worker log)."
    assert error_is_expected(SoftTimeLimitExceeded()) and error_is_expected(BadInputError("x"))
    assert not error_is_expected(RuntimeError("x")) and error_is_expected(OSError("x"), (OSError,))


# -- heartbeats ---------------------------------------------------------------------------------------


def _wait(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll ``check`` until it is truthy (a generous ceiling: the machine may be loaded)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return value


@pytest.fixture
def heartbeats(monkeypatch, settings) -> list[lifecycle.Heartbeat]:
    """Heartbeats every second (stale time 4 s), each one recorded."""
    settings.RIS_JOB_STALE_SECONDS = 4
    started: list[lifecycle.Heartbeat] = []

    class Recorded(lifecycle.Heartbeat):
        def __enter__(self):
            started.append(self)
            return super().__enter__()

    monkeypatch.setattr(lifecycle, "Heartbeat", Recorded)
    return started


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_beats_while_the_body_runs(kind, engine, heartbeats):
    pk = kind.make()

    def beating():  # inside the engine: wait for the heartbeat thread to move the row's heartbeat
        row = kind.row(pk)
        _wait(lambda: kind.row(pk).heartbeat_at > row.started_at, f"a heartbeat of {kind.name} {pk}")

    engine.during = beating
    assert kind.run(pk, "m-1") == "succeeded"
    assert len(heartbeats) == 1 and heartbeats[0].interval == 1.0 and not heartbeats[0].stopped


@pytest.mark.django_db(transaction=True)
def test_a_row_that_stops_being_the_workers_is_noticed_and_nothing_is_written(kind, engine, heartbeats):
    """A job cancelled, a refine expired, a shard requeued (``--resume``) while the engine works."""
    from server.ris.services import job_cancel
    from server.web.services.refine import refine_requests_expire

    pk = kind.make()
    taken = {
        "job": lambda: job_cancel(job=SegmentationJob.objects.get(pk=pk)),
        "refine": lambda: refine_requests_expire(now=timezone.now() + timedelta(hours=1)),
        "shard": lambda: benchmark_services.shards_requeue(run=BenchmarkRun.objects.get(shards=pk)),
    }[kind.name]

    def taken_away():
        if engine.runs() == 1:
            taken()
            _wait(lambda: heartbeats and heartbeats[0].stopped, "the heartbeat to notice")

    engine.during = taken_away
    outcome = kind.run(pk, "m-1")
    row = kind.row(pk)
    if kind.name == "job":
        assert outcome == "cancelled" and row.state == "cancelled"
        assert Candidate.objects.filter(job_id=pk).count() == 0
    elif kind.name == "refine":
        assert outcome == "discarded" and row.state == "failed" and row.result_rle is None
        assert "is gone: no heartbeat for" in row.error, row.error
    else:  # the shard stopped after the image in hand; its new message goes on from there
        assert outcome == "stopped" and row.state == "queued" and row.attempts == 1
        stored = BenchmarkSentenceResult.objects.filter(run=row.run).count()
        assert 0 < stored < row.n_sentences
        calls = engine.runs()
        engine.during = None
        assert kind.run(pk, "m-2") == "succeeded"
        assert BenchmarkSentenceResult.objects.filter(run=row.run).count() == row.n_sentences
        assert engine.runs() == calls + 1  # only the image not yet done was asked again


def test_a_heartbeat_survives_a_database_error_and_stops_when_told():
    answers: list[Any] = [OperationalError("gone"), True, False]
    beats: list[int] = []

    def beat() -> bool:
        beats.append(1)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    heartbeat = lifecycle.Heartbeat(beat, interval=0.01, what="Test 1")
    with heartbeat:
        _wait(lambda: heartbeat.stopped, "the heartbeat to stop", timeout=30)
    assert len(beats) == 3


# -- refine requests expire in words ---------------------------------------------------------------


def test_refine_expiry_says_what_happened(project, user, sent):
    from server.web.services.refine import refine_requests_expire

    images = [
        image_make(project, user, name=f"{i}.png", color=(i, 9, 9), width=30, height=20) for i in range(4)
    ]

    def make(image):
        return refine_request_create(image=image, requested_by=user, points_xy=[[3, 3]], labels=[1]).pk

    never_taken, lost, busy, fresh = (make(image) for image in images)
    refine_request_claim(request_id=lost, worker="w1@gone", task_id="m-1")
    refine_request_claim(request_id=busy, worker="w2@slow", task_id="m-2")
    RefineRequest.objects.filter(pk__in=[never_taken, lost, busy]).update(
        created_at=timezone.now() - LONG_AGO
    )
    RefineRequest.objects.filter(pk=lost).update(heartbeat_at=timezone.now() - LONG_AGO)
    assert refine_requests_expire(stale_seconds=300) == sorted([never_taken, lost, busy])
    rows = {r.pk: r for r in RefineRequest.objects.all()}
    # Queued behind the two running ones; a worker started something lately, so it is not "no worker".
    assert rows[never_taken].error.startswith(
        "The model did not answer within 300 s: it is still queued behind 2 items"
    )
    assert "(w1@gone) is gone: no heartbeat for" in rows[lost].error
    assert "w2@slow is still on it" in rows[busy].error
    assert rows[fresh].state == "queued"


def test_refine_expiry_names_a_missing_interactive_worker(project, user, sent):
    from server.web.services.refine import refine_requests_expire

    image = image_make(project, user, width=30, height=20)
    pk = refine_request_create(image=image, requested_by=user, points_xy=[[3, 3]], labels=[1]).pk
    RefineRequest.objects.filter(pk=pk).update(created_at=timezone.now() - LONG_AGO)
    assert refine_requests_expire(stale_seconds=300) == [pk]
    assert "no interactive worker started anything" in RefineRequest.objects.get(pk=pk).error


def test_a_newer_click_supersedes_a_queued_older_one(project, user, sent):
    image = image_make(project, user, width=30, height=20)
    first = refine_request_create(image=image, requested_by=user, points_xy=[[3, 3]], labels=[1]).pk
    second = refine_request_create(
        image=image, requested_by=user, points_xy=[[3, 3], [5, 5]], labels=[1, 0]
    ).pk
    assert RefineRequest.objects.get(pk=first).state == "superseded"
    assert refine_request_claim(request_id=first, worker="w", task_id="m-1") is None  # the worker skips it
    assert refine_request_claim(request_id=second, worker="w", task_id="m-2") is not None
    # A running request is left to finish; only queued ones are superseded.
    third = refine_request_create(image=image, requested_by=user, points_xy=[[4, 4]], labels=[1]).pk
    assert RefineRequest.objects.get(pk=second).state == "running"
    assert RefineRequest.objects.get(pk=third).state == "queued"


# -- names ------------------------------------------------------------------------------------------


def test_every_task_the_server_sends_is_registered_and_routed_under_its_old_name(settings):
    from workers.celery_app import app

    app.loader.import_default_modules()
    for name in dispatch.TASK_NAMES:
        assert name in app.tasks, name
        assert name in settings.CELERY_TASK_ROUTES, name
    assert settings.CELERY_BEAT_SCHEDULE["reconcile-jobs"]["task"] == dispatch.RECONCILE
    assert {"workers.web_tasks.refine_mask", "workers.benchmark_tasks.run_benchmark_shard"} <= set(app.tasks)
