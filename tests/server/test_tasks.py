"""The segmentation tasks run in-process (``apply``) against a fake engine with the real engine's interface,
put in through the tasks' one door to the engine (``workers.tasks.engine_access.engine_get``).

The rules every kind of work shares (redelivery, lost workers, database retries, error wording) are checked
for jobs, refine requests and shards alike in ``test_work_lifecycle.py``. The real worker process, Redis,
PostgreSQL and MobileSAM are exercised in tests/integration and tests/faults.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from django.db import OperationalError

from server.ris.models import Candidate, JobState, SegmentationJob
from server.ris.services.rle import rle_from_mask
from tests.server.factories import expression_make, image_make, job_of
from workers.engine.core.errors import ConfigError
from workers.engine.core.meter import Meter
from workers.engine.core.types import Candidate as EngineCandidate
from workers.engine.runtime import Prediction
from workers.tasks import engine_access, lifecycle
from workers.tasks import segmentation as tasks
from workers.tasks.reconcile import reconcile_jobs

pytestmark = pytest.mark.django_db


class FakeEngine:
    """Same calls as ``workers.engine.runtime.Engine``; answers with bands of the image, records calls."""

    def __init__(self, error: Exception | None = None) -> None:
        self.meter = Meter()
        self.error = error
        self.predicted: list[dict] = []
        self.prepared: list[tuple[str, str]] = []
        self.early = False  # hand early candidates (one band) to on_partial first, as on an unprepared image
        self.after_early: Callable[[], None] = lambda: None

    def resolve_config(self, pipeline, overrides=None):
        return {"pipeline": pipeline, "v": 0.95, "r": 0.5, **dict(overrides or {})}

    def predict(
        self, image, expressions, *, pipeline, config=None, top_k=None, on_progress=None, on_partial=None
    ):
        if self.early and on_partial is not None:
            height, width = image.rgb.shape[:2]
            mask = np.zeros((height, width), dtype=bool)
            mask[height // 2 :, :] = True
            coarse = EngineCandidate(
                0, rle_from_mask(mask), (0, height // 2, width, height), int(mask.sum()), 0.5, {}
            )
            resolved = self.resolve_config(pipeline, config)
            on_partial(Prediction([[coarse] for _ in expressions], pipeline, resolved, "tiny", partial=True))
            self.after_early()
        self.predicted.append(
            {
                "shape": image.rgb.shape,
                "sha256": image.sha256,
                "expressions": list(expressions),
                "config": config,
                "pipeline": pipeline,
                "top_k": top_k,
            }
        )
        if self.error is not None:
            raise self.error
        with self.meter.stage("proposals"):
            height, width = image.rgb.shape[:2]
        out = []
        for rank in range(2):
            mask = np.zeros((height, width), dtype=bool)
            mask[: height // (rank + 2), :] = True
            out.append(
                EngineCandidate(
                    rank,
                    rle_from_mask(mask),
                    (0, 0, width, height // (rank + 2)),
                    int(mask.sum()),
                    0.9 - rank * 0.2,
                    {"s_van": 0.3},
                )
            )
        return Prediction([out for _ in expressions], pipeline, self.resolve_config(pipeline, config), "tiny")

    def prepare(self, image, *, pipeline, config=None):
        self.prepared.append((image.sha256, pipeline))


@pytest.fixture
def engine(monkeypatch):
    fake = FakeEngine()
    monkeypatch.setattr(engine_access, "engine_get", lambda: fake)
    return fake


@pytest.fixture
def job(project, user):
    image = image_make(project, user, width=30, height=20)
    return job_of(expression_make(image, user, "the top band"))


def test_job_runs_and_writes_candidates(engine, job):
    assert tasks.run_segmentation_job.apply(args=[job.pk]).get() == "succeeded"
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED and job.attempts == 1 and job.worker
    call = engine.predicted[0]
    assert call["shape"] == (20, 30, 3) and call["expressions"] == ["the top band"]
    assert call["pipeline"] == "global_local" and call["top_k"] == 10
    assert job.config == {"pipeline": "global_local", "v": 0.95, "r": 0.5}  # frozen as it ran
    assert job.timings["engine"]["stages"]["proposals"]["calls"] == 1
    assert {"load_image_s", "predict_s", "queue_wait_s"} <= set(job.timings)
    ranks = list(Candidate.objects.filter(job=job).values_list("rank", "area"))
    assert ranks == [(0, 300), (1, 180)]


def test_second_delivery_is_skipped_and_adds_nothing(engine, job):
    tasks.run_segmentation_job.apply(args=[job.pk])
    assert tasks.run_segmentation_job.apply(args=[job.pk]).get() == "skipped"
    assert Candidate.objects.filter(job=job).count() == 2 and len(engine.predicted) == 1


def test_engine_error_fails_the_job_in_words(monkeypatch, job):
    fake = FakeEngine(error=ConfigError("Unknown key 'points_per_sid' in the global_local config."))
    monkeypatch.setattr(engine_access, "engine_get", lambda: fake)
    assert tasks.run_segmentation_job.apply(args=[job.pk]).get() == "failed"
    job.refresh_from_db()
    assert (
        job.state == JobState.FAILED
        and job.error == "Unknown key 'points_per_sid' in the global_local config."
    )


def test_unexpected_error_is_named(monkeypatch, job):
    monkeypatch.setattr(
        engine_access, "engine_get", lambda: FakeEngine(error=RuntimeError("CUDA out of memory"))
    )
    tasks.run_segmentation_job.apply(args=[job.pk])
    job.refresh_from_db()
    assert job.error == "Unexpected RuntimeError: CUDA out of memory (details in the worker log)."


def test_cancelled_job_is_not_run(engine, job):
    SegmentationJob.objects.filter(pk=job.pk).update(state=JobState.CANCELLED)
    assert tasks.run_segmentation_job.apply(args=[job.pk]).get() == "skipped"
    assert engine.predicted == []


def test_database_error_retries_and_the_retry_reclaims(engine, job, monkeypatch):
    SegmentationJob.objects.filter(pk=job.pk).update(celery_task_id="message-1")
    from server.ris import services

    original = services.image_load_rgb
    failures = {"left": 1}

    def flaky(image):
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("server closed the connection unexpectedly")
        return original(image)

    monkeypatch.setattr(services, "image_load_rgb", flaky)
    monkeypatch.setattr(lifecycle, "db_backoff", lambda retries: 0)
    result = tasks.run_segmentation_job.apply(args=[job.pk], task_id="message-1")
    assert result.get() == "succeeded"
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED and job.attempts == 2


def test_prepare_image_calls_engine_prepare(engine, job, settings):
    image = job.expression.image
    assert tasks.prepare_image.apply(args=[image.pk]).get() == "prepared"
    assert engine.prepared == [(image.sha256, settings.RIS_DEFAULT_PIPELINE)]
    assert tasks.prepare_image.apply(args=[999_999]).get() == "missing"


def test_reconcile_task_reports(job, settings, monkeypatch):
    from server.ris.services import dispatch

    sent = []
    monkeypatch.setattr(dispatch, "broker_queue_size", lambda queue: None)
    monkeypatch.setattr(
        dispatch, "task_send", lambda name, *, args, priority=None, queue=None: sent.append(args) or "m"
    )
    SegmentationJob.objects.filter(pk=job.pk).update(
        created_at=SegmentationJob.objects.get(pk=job.pk).created_at.replace(year=2000)
    )
    assert reconcile_jobs.apply().get() == {
        "jobs": {"requeued": [job.pk], "failed": []},
        "refine_requests": {"requeued": [], "failed": [], "expired": []},
        "shards": {"requeued": [], "failed": []},
        "benchmark_runs": {"interrupted": []},
    }
    assert sent == [[job.pk]]
