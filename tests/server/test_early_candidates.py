"""Early candidates of a running job: stored under the attempt check, shown by the API as ``partial``,
replaced by the final ones in one transaction (except an early one a review chose), and the worker's
``on_partial`` wiring: stored before the final ones, a cancel noticed there stops the engine."""

from __future__ import annotations

import threading
import time

import pytest

from server.ris.errors import InvalidInput
from server.ris.models import Candidate, JobState, Review, SegmentationJob
from server.ris.services import (
    job_cancel,
    job_claim,
    job_partial_candidates,
    job_retry,
    job_succeed,
    review_create,
)
from tests.engine.conftest import model_dir, model_hub, model_store
from tests.engine.ranking_fixtures import TINY_SAM_AMG, single_torch_thread
from tests.server.factories import candidate_dicts, expression_make, image_make, job_of
from tests.server.test_tasks import FakeEngine
from workers.tasks import engine_access
from workers.tasks import segmentation as tasks

_ = (model_dir, model_store, model_hub, single_torch_thread)  # fixtures, imported for pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def image(project, user):
    return image_make(project, user, width=30, height=20)


@pytest.fixture
def running(image, user):
    """A job claimed by worker w1 (attempt 1)."""
    job = job_of(expression_make(image, user))
    return job_claim(job_id=job.pk, worker="w1")


def _ranks(job, *, partial: bool) -> list[int]:
    return list(
        Candidate.objects.filter(job=job, partial=partial).order_by("rank").values_list("rank", flat=True)
    )


# -- the service ---------------------------------------------------------------------------------------


def test_early_candidates_are_stored_then_replaced_by_the_final_ones(running, image):
    assert job_partial_candidates(job_id=running.pk, candidates=candidate_dicts(20, 30, 2), attempt=1)
    assert _ranks(running, partial=True) == [0, 1] and _ranks(running, partial=False) == []
    # A second early set (another coarse pass) replaces the first.
    assert job_partial_candidates(job_id=running.pk, candidates=candidate_dicts(20, 30, 3), attempt=1)
    assert _ranks(running, partial=True) == [0, 1, 2]
    assert job_succeed(job_id=running.pk, candidates=candidate_dicts(20, 30, 4), attempt=1)
    assert _ranks(running, partial=True) == [] and _ranks(running, partial=False) == [0, 1, 2, 3]


def test_early_candidates_of_another_attempt_or_an_ended_job_are_refused(running):
    assert not job_partial_candidates(job_id=running.pk, candidates=candidate_dicts(20, 30, 2), attempt=2)
    assert Candidate.objects.count() == 0
    job_cancel(job=running)
    assert not job_partial_candidates(job_id=running.pk, candidates=candidate_dicts(20, 30, 2), attempt=1)
    assert Candidate.objects.count() == 0


def test_retry_after_a_cancel_during_early_candidates_starts_clean(running, monkeypatch):
    monkeypatch.setattr("server.ris.services.jobs.job_enqueue_on_commit", lambda **kwargs: None)
    assert job_partial_candidates(job_id=running.pk, candidates=candidate_dicts(20, 30, 2), attempt=1)
    job_cancel(job=running)
    assert not job_succeed(job_id=running.pk, candidates=candidate_dicts(20, 30, 3), attempt=1)
    assert _ranks(running, partial=True) == [0, 1] and _ranks(running, partial=False) == []
    job_retry(job=running)
    assert Candidate.objects.filter(job=running).count() == 0
    again = job_claim(job_id=running.pk, worker="w2")
    assert again is not None and again.attempts == 2
    assert job_partial_candidates(job_id=running.pk, candidates=candidate_dicts(20, 30, 1), attempt=2)
    assert _ranks(running, partial=True) == [0]


def test_malformed_early_candidates_are_refused_in_words(running):
    twice = candidate_dicts(20, 30, 2)
    twice[1]["rank"] = 0
    with pytest.raises(InvalidInput, match="repeated ranks"):
        job_partial_candidates(job_id=running.pk, candidates=twice, attempt=1)
    assert Candidate.objects.count() == 0


def test_an_accepted_early_candidate_is_kept_beside_the_final_ones(running, user):
    job_partial_candidates(job_id=running.pk, candidates=candidate_dicts(20, 30, 3), attempt=1)
    early = Candidate.objects.get(job=running, partial=True, rank=1)
    review = review_create(
        expression=running.expression, decision="accepted", reviewer=user, candidate_id=early.pk
    )
    # The annotator has chosen: a later early set of a redelivery does not replace the early ones.
    assert job_partial_candidates(job_id=running.pk, candidates=candidate_dicts(20, 30, 1), attempt=1)
    assert _ranks(running, partial=True) == [0, 1, 2]
    assert job_succeed(job_id=running.pk, candidates=candidate_dicts(20, 30, 3), attempt=1)
    assert _ranks(running, partial=True) == [1]  # the chosen one stays, the others go
    assert _ranks(running, partial=False) == [0, 1, 2]
    review.refresh_from_db()
    assert review.candidate_id == early.pk and Review.objects.get().candidate.rle == early.rle


def test_an_early_candidate_replaced_meanwhile_cannot_be_accepted(running, user):
    job_partial_candidates(job_id=running.pk, candidates=candidate_dicts(20, 30, 2), attempt=1)
    early = Candidate.objects.get(job=running, partial=True, rank=0)
    job_succeed(job_id=running.pk, candidates=candidate_dicts(20, 30, 2), attempt=1)
    with pytest.raises(InvalidInput, match="not one of the candidates"):
        review_create(
            expression=running.expression, decision="accepted", reviewer=user, candidate_id=early.pk
        )
    assert Review.objects.count() == 0


def test_a_review_of_an_early_candidate_deleted_under_it_is_refused_in_words(running, user, monkeypatch):
    """The race with job_succeed: the early row was read, then replaced by the final ones while the review
    waited for the job's lock; the review then finds it gone and says so (a 400, not a broken verdict)."""
    job_partial_candidates(job_id=running.pk, candidates=candidate_dicts(20, 30, 2), attempt=1)
    early = Candidate.objects.get(job=running, partial=True, rank=0)

    class JobsReplacedWhileLocking:
        class objects:  # noqa: N801 - the shape of a model's manager
            @staticmethod
            def select_for_update():
                job_succeed(job_id=running.pk, candidates=candidate_dicts(20, 30, 2), attempt=1)
                return SegmentationJob.objects.select_for_update()

    monkeypatch.setattr("server.ris.services.reviews.SegmentationJob", JobsReplacedWhileLocking)
    with pytest.raises(InvalidInput, match="replaced by the final ones"):
        review_create(
            expression=running.expression, decision="accepted", reviewer=user, candidate_id=early.pk
        )
    assert Review.objects.count() == 0


# -- the API ----------------------------------------------------------------------------------------


def test_api_shows_early_candidates_as_partial_then_the_final_ones(api_client, running):
    job_partial_candidates(job_id=running.pk, candidates=candidate_dicts(20, 30, 2), attempt=1)
    job = api_client.get(f"/api/jobs/{running.pk}/").json()
    assert job["state"] == "running" and job["partial"] is True
    listed = api_client.get(f"/api/jobs/{running.pk}/candidates/").json()
    assert [(c["rank"], c["partial"]) for c in listed] == [(0, True), (1, True)]
    listed_expressions = api_client.get(f"/api/images/{running.expression.image_id}/expressions/").json()
    assert [e["job"]["partial"] for e in listed_expressions] == [True]

    job_succeed(job_id=running.pk, candidates=candidate_dicts(20, 30, 3), attempt=1)
    job = api_client.get(f"/api/jobs/{running.pk}/").json()
    assert job["state"] == "succeeded" and job["partial"] is False
    listed = api_client.get(f"/api/jobs/{running.pk}/candidates/").json()
    assert [(c["rank"], c["partial"]) for c in listed] == [(0, False), (1, False), (2, False)]


def test_api_accepts_an_early_candidate_while_the_job_runs(api_client, running):
    job_partial_candidates(job_id=running.pk, candidates=candidate_dicts(20, 30, 2), attempt=1)
    early = api_client.get(f"/api/jobs/{running.pk}/candidates/").json()[1]
    answer = api_client.post(
        f"/api/expressions/{running.expression_id}/reviews/",
        {"decision": "accepted", "candidate": early["id"]},
        format="json",
    )
    assert answer.status_code == 201, answer.content
    job_succeed(job_id=running.pk, candidates=candidate_dicts(20, 30, 2), attempt=1)
    listed = api_client.get(f"/api/jobs/{running.pk}/candidates/").json()
    # The final ones first, then the early one the review chose (its mask stays the verdict's).
    assert [(c["rank"], c["partial"]) for c in listed] == [(0, False), (1, False), (1, True)]
    assert listed[2]["id"] == early["id"]


# -- the worker -------------------------------------------------------------------------------------


@pytest.fixture
def early_engine(monkeypatch):
    fake = FakeEngine()
    fake.early = True
    monkeypatch.setattr(engine_access, "engine_get", lambda: fake)
    return fake


def test_task_stores_early_candidates_before_the_final_ones(early_engine, running):
    SegmentationJob.objects.filter(pk=running.pk).update(state=JobState.QUEUED)  # let the task claim it
    seen: list[list[tuple[int, bool]]] = []
    early_engine.after_early = lambda: seen.append(
        list(Candidate.objects.filter(job_id=running.pk).values_list("rank", "partial"))
    )
    assert tasks.run_segmentation_job.apply(args=[running.pk]).get() == "succeeded"
    assert seen == [[(0, True)]]  # stored while the engine still worked on the full run
    assert _ranks(running, partial=True) == [] and _ranks(running, partial=False) == [0, 1]
    running.refresh_from_db()
    assert 0 <= running.timings["early_s"] <= running.timings["predict_s"]


def test_task_cancelled_during_early_candidates_stops_and_writes_nothing_final(early_engine, running):
    SegmentationJob.objects.filter(pk=running.pk).update(state=JobState.QUEUED)
    early_engine.after_early = lambda: SegmentationJob.objects.filter(pk=running.pk).update(
        state=JobState.CANCELLED
    )
    # The cancel lands after the early write; the next report (the full run's) stops the engine, and the
    # final result is not written.
    assert tasks.run_segmentation_job.apply(args=[running.pk]).get() == "cancelled"
    running.refresh_from_db()
    assert running.state == JobState.CANCELLED
    assert _ranks(running, partial=False) == []


# -- the worker with the real engine (tiny models) ---------------------------------------------------------


@pytest.fixture
def real_engine(monkeypatch, model_store, model_hub, tmp_path, single_torch_thread):
    from workers.engine.core.settings import EngineSettings
    from workers.engine.runtime import Engine

    settings = EngineSettings(
        model_dir=model_store.root, cache_dir=tmp_path / "cache", device="cpu", profile="tiny"
    )
    engine = Engine(settings, hub=model_hub)
    monkeypatch.setattr(engine_access, "engine_get", lambda: engine)
    monkeypatch.setattr("workers.tasks.progress.MIN_INTERVAL_S", 0.0)  # every stage report written
    return engine


def _spy(monkeypatch, name: str) -> list[dict]:
    """Record the keyword arguments of each call of service ``name`` (called through)."""
    import server.ris.services as services

    calls: list[dict] = []
    real = getattr(services, name)

    def spy(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(services, name, spy)
    return calls


FULL_GRID = {"proposal_source": "sam_tiny", "amg": {**TINY_SAM_AMG, "points_per_side": 12}}


def test_task_with_the_real_engine_stores_early_then_final_candidates(monkeypatch, real_engine, running):
    SegmentationJob.objects.filter(pk=running.pk).update(state=JobState.QUEUED, config=FULL_GRID)
    early_calls = _spy(monkeypatch, "job_partial_candidates")
    stages = _spy(monkeypatch, "job_progress")
    assert tasks.run_segmentation_job.apply(args=[running.pk]).get() == "succeeded"
    assert (
        len(early_calls) == 1 and early_calls[0]["candidates"] and early_calls[0]["attempt"] == 2
    )  # re-claimed
    names = [call["stage"]["name"] for call in stages]
    first_scoring = names.index("scoring")
    # The coarse run's stages, the early candidates, then the full run's stages afresh.
    assert "proposals" in names[:first_scoring] and "proposals" in names[first_scoring:]
    totals = {call["stage"].get("total") for call in stages if call["stage"]["name"] == "proposals"}
    assert {64, 144} <= totals  # 8 x 8 points, then 12 x 12
    running.refresh_from_db()
    assert running.state == JobState.SUCCEEDED and running.config["amg"]["points_per_side"] == 12
    assert _ranks(running, partial=True) == [] and len(_ranks(running, partial=False)) > 0
    assert "early_s" in running.timings


def test_task_waits_for_another_workers_preparation_of_the_image(monkeypatch, real_engine, running):
    """A background preparer (another process in production; a thread with its own cache here, over the
    same cache folder) is generating the image's proposals; the job reports stage ``waiting`` with the
    preparer's points and takes its proposals instead of generating them again."""
    from server.ris.services import image_load_rgb
    from workers.engine.blocks.proposals.cached import cached_proposals, proposal_params
    from workers.engine.core.cache import FeatureCache, ImageContext
    from workers.engine.core.inflight import read_marker
    from workers.tasks.engine_access import image_input

    SegmentationJob.objects.filter(pk=running.pk).update(state=JobState.QUEUED, config=FULL_GRID)
    image = running.expression.image
    amg = real_engine.pipeline(running.pipeline, FULL_GRID).config.amg

    job_waits = threading.Event()

    def slow(stage: str, done: int, total: int) -> None:
        # A loaded background worker: it holds its first batch until the job waits for it (so the test
        # does not depend on which thread is faster), then takes a while per batch.
        if done == 0:
            assert job_waits.wait(timeout=60), "the job never reported stage 'waiting'"
        time.sleep(0.5)

    preparer_ctx = ImageContext(
        image=image_input(image_load_rgb(image), image.sha256),
        cache=FeatureCache(cache_dir=real_engine.cache.cache_dir),
        progress=slow,
    )
    preparer = threading.Thread(
        target=cached_proposals, args=(preparer_ctx, real_engine.hub, "sam_tiny", amg)
    )
    preparer.start()
    entry = preparer_ctx.cache.entry_path(
        preparer_ctx.key("proposals", proposal_params(real_engine.hub, "sam_tiny", amg))
    )
    while read_marker(entry) is None and preparer.is_alive():
        time.sleep(0.01)

    stages = _spy(monkeypatch, "job_progress")
    import server.ris.services as services

    spied = services.job_progress

    def note_waiting(**kwargs):
        if kwargs["stage"]["name"] == "waiting":
            job_waits.set()
        return spied(**kwargs)

    monkeypatch.setattr(services, "job_progress", note_waiting)
    assert tasks.run_segmentation_job.apply(args=[running.pk]).get() == "succeeded"
    preparer.join()
    waited = [call["stage"] for call in stages if call["stage"]["name"] == "waiting"]
    counted = [stage for stage in waited if stage.get("total")]  # none before the preparer's first batch
    assert counted and all(stage["unit"] == "points" and stage["total"] == 144 for stage in counted)
    full_run = [call["stage"] for call in stages][
        [call["stage"]["name"] for call in stages].index("waiting") :
    ]
    assert all(not (stage["name"] == "proposals" and stage.get("total") == 144) for stage in full_run)
    assert real_engine.meter.calls("sam_tiny") == 1  # the coarse grid only: the full grid was the preparer's
    running.refresh_from_db()
    assert running.state == JobState.SUCCEEDED and _ranks(running, partial=False)
