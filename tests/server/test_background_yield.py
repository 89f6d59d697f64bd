"""Background work yields to interactive work, as the worker wires it (``workers.tasks.yielding``): the
selector that says interactive work runs, the task layer's hook around background jobs and image
preparation (with its ceiling and off switch), and the lower CPU priority of a background-only worker.

The pause itself (resume, ceiling rules, cancellation while paused) is checked on a fake clock in
tests/engine/test_yielding.py; real worker processes in tests/integration/test_yield_with_real_workers.py.
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import OperationalError
from django.utils import timezone

from server.ris.models import JobState, SegmentationJob
from server.ris.services import expression_create, job_claim, job_progress
from server.web.models import RefineRequest, RefineState
from server.web.selectors import interactive_work_running
from server.web.services.refine import refine_request_claim
from tests.server.factories import image_make, job_of
from tests.server.test_tasks import FakeEngine
from workers import celery_app
from workers.engine.core.meter import checkpoint
from workers.lanes import BACKGROUND, INTERACTIVE
from workers.tasks import engine_access
from workers.tasks import segmentation as tasks
from workers.tasks import yielding as task_yielding

pytestmark = pytest.mark.django_db


@pytest.fixture
def image(project, user):
    return image_make(project, user, width=30, height=20)


@pytest.fixture
def quick_yield(settings):
    """Yielding on, asked every 20 ms, a pause cut short after 0.3 s (so a test never waits long)."""
    settings.RIS_BACKGROUND_YIELD = True
    settings.RIS_BACKGROUND_YIELD_POLL_S = 0.02
    settings.RIS_BACKGROUND_YIELD_MAX_S = 0.3
    return settings


class CheckpointingEngine(FakeEngine):
    """The fake engine, with checkpoints where the real one has them (a stage per unit of work)."""

    def prepare(self, image, *, pipeline, config=None):
        for unit in range(3):
            with self.meter.stage(f"unit {unit}"):
                pass
        super().prepare(image, pipeline=pipeline, config=config)


@pytest.fixture
def engine(monkeypatch):
    fake = CheckpointingEngine()
    monkeypatch.setattr(engine_access, "engine_get", lambda: fake)
    return fake


def _job(image, user, text, lane=INTERACTIVE):
    return job_of(expression_create(image=image, text=text, author=user, lane=lane))


def test_interactive_work_runs_while_an_interactive_job_or_a_refine_runs(image, user):
    assert not interactive_work_running()
    bulk = _job(image, user, "a bulk row", lane=BACKGROUND)
    typed = _job(image, user, "the cat")
    assert not interactive_work_running()  # queued work is not running work
    job_claim(job_id=bulk.pk, worker="background@here")
    assert not interactive_work_running()  # background work never counts
    job_claim(job_id=typed.pk, worker="interactive@here")
    assert interactive_work_running()
    # Waiting for the background preparation of its image: the preparer must not pause for it.
    assert job_progress(job_id=typed.pk, progress=0.1, stage={"name": "waiting", "done": 64, "total": 1024})
    assert not interactive_work_running()
    assert job_progress(job_id=typed.pk, progress=0.2, stage={"name": "features"})
    assert interactive_work_running()
    SegmentationJob.objects.filter(pk=typed.pk).update(state=JobState.SUCCEEDED)
    assert not interactive_work_running()  # done: background work resumes

    refine = RefineRequest.objects.create(image=image, points_xy=[[3, 4]], labels=[1])
    assert not interactive_work_running()
    refine_request_claim(request_id=refine.pk, worker="interactive@here")
    assert interactive_work_running()
    RefineRequest.objects.filter(pk=refine.pk).update(state=RefineState.SUCCEEDED)
    assert not interactive_work_running()


def test_a_running_row_whose_worker_died_stops_counting(image, user, settings):
    typed = _job(image, user, "the cat")
    job_claim(job_id=typed.pk, worker="interactive@gone")
    stale = timezone.now() - timedelta(seconds=settings.RIS_JOB_STALE_SECONDS + 1)
    SegmentationJob.objects.filter(pk=typed.pk).update(heartbeat_at=stale)
    assert not interactive_work_running()
    refine = RefineRequest.objects.create(image=image, points_xy=[[3, 4]], labels=[1])
    refine_request_claim(request_id=refine.pk, worker="interactive@gone")
    RefineRequest.objects.filter(pk=refine.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.RIS_REFINE_STALE_SECONDS + 1)
    )
    assert not interactive_work_running()


def test_background_block_pauses_at_checkpoints_while_interactive_work_runs(image, user, quick_yield):
    job_claim(job_id=_job(image, user, "the cat").pk, worker="interactive@here")
    with task_yielding.background_yielding("Test work") as stats:
        checkpoint("decoder batch 0")
    assert stats.pauses == 1 and stats.where == ["decoder batch 0"]
    assert stats.ceilings == 1 and stats.paused_s >= 0.3  # the job never ended: the ceiling did
    with task_yielding.background_yielding("Test work") as idle:
        SegmentationJob.objects.update(state=JobState.SUCCEEDED)
        checkpoint("decoder batch 0")
    assert idle.pauses == 0 and idle.asks == 1


def test_the_off_switch_runs_background_work_as_it_is(image, user, quick_yield):
    quick_yield.RIS_BACKGROUND_YIELD = False
    job_claim(job_id=_job(image, user, "the cat").pk, worker="interactive@here")
    with task_yielding.background_yielding("Test work") as stats:
        checkpoint("decoder batch 0")
    assert stats is None


def test_a_database_that_cannot_answer_does_not_pause(monkeypatch):
    def down(**_):
        raise OperationalError("the database is restarting")

    monkeypatch.setattr("server.web.selectors.interactive_work_running", down)
    assert task_yielding.interactive_busy() is False


def test_a_background_job_yields_and_an_interactive_one_does_not(engine, image, user, quick_yield):
    running = _job(image, user, "someone's click")
    job_claim(job_id=running.pk, worker="interactive@here")
    bulk = _job(image, user, "a bulk row", lane=BACKGROUND)
    assert tasks.run_segmentation_job.apply(args=[bulk.pk]).get() == "succeeded"
    bulk.refresh_from_db()
    assert bulk.timings["yield_paused_s"] >= 0.3  # the fake engine's stage paused up to the ceiling
    typed = _job(image, user, "the cat")
    assert tasks.run_segmentation_job.apply(args=[typed.pk]).get() == "succeeded"
    typed.refresh_from_db()
    assert "yield_paused_s" not in typed.timings


def test_preparing_an_upload_yields(engine, image, user, quick_yield, caplog):
    job_claim(job_id=_job(image, user, "the cat").pk, worker="interactive@here")
    caplog.set_level("INFO", logger="workers.tasks.yielding")
    assert tasks.prepare_image.apply(args=[image.pk]).get() == "prepared"
    assert engine.prepared == [(image.sha256, "global_local")]
    assert f"Preparing image {image.pk} yielded to interactive work 1 time" in caplog.text
    assert "cut short by RIS_BACKGROUND_YIELD_MAX_S" in caplog.text


def test_only_a_background_only_worker_lowers_its_priority(monkeypatch, settings):
    calls: list[int] = []
    monkeypatch.setattr(task_yielding.os, "nice", lambda step: calls.append(step) or 10 + step)
    settings.RIS_BACKGROUND_NICE = 10
    assert task_yielding.lower_priority(["interactive", "default"]) is None
    assert task_yielding.lower_priority(["background", "interactive"]) is None
    assert task_yielding.lower_priority([]) is None
    assert task_yielding.lower_priority(["background"]) == 20 and calls == [10]
    # As the worker starts (celeryd_after_setup), with the queues that -Q left it.
    worker = SimpleNamespace(app=SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace())))
    worker.app.amqp.queues.consume_from = {"background": object()}
    celery_app._worker_after_setup(instance=worker)
    assert calls == [10, 10]
    settings.RIS_BACKGROUND_NICE = 0  # the off switch
    assert task_yielding.lower_priority(["background"]) is None and calls == [10, 10]


def test_a_refused_priority_change_is_logged_not_raised(monkeypatch, settings, caplog):
    def refuse(step):
        raise PermissionError("not permitted")

    monkeypatch.setattr(task_yielding.os, "nice", refuse)
    settings.RIS_BACKGROUND_NICE = 5
    assert task_yielding.lower_priority(["background"]) is None
    assert "Could not lower the background worker's CPU priority" in caplog.text
