"""Expressions and the job lifecycle: creation rules, dispatch on commit, claim, succeed, fail, cancel,
retry and the reconciler."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from server.ris.errors import Conflict, InvalidInput
from server.ris.models import Candidate, Expression, JobState, SegmentationJob
from server.ris.services import (
    expression_create,
    job_cancel,
    job_claim,
    job_fail,
    job_progress,
    job_retry,
    job_succeed,
    jobs_reconcile,
)
from tests.server.factories import candidate_dicts, expression_make, image_make, job_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch):
    """Record messages instead of sending them to the broker; returns the list of (task, args, options)."""
    calls: list[tuple[str, list, dict]] = []

    class FakeResult:
        def __init__(self, n: int) -> None:
            self.id = f"message-{n}"

    class FakeApp:
        def send_task(self, name, args=None, **options):
            calls.append((name, list(args or []), options))
            return FakeResult(len(calls))

    import workers.celery_app

    monkeypatch.setattr(workers.celery_app, "app", FakeApp())
    return calls


@pytest.fixture
def image(project, user):
    return image_make(project, user)


# -- expressions -----------------------------------------------------------------------------------


def test_expression_creates_a_queued_job_sent_on_commit(
    image, user, sent, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        expression = expression_create(image=image, text="  the green square \n", author=user)
        assert [c for c in sent if c[0].endswith("run_segmentation_job")] == []  # nothing before commit
    job = job_of(expression)
    assert expression.text == "the green square"
    assert job.state == JobState.QUEUED and job.pipeline == "global_local" and job.config == {}
    assert ("workers.tasks.run_segmentation_job", [job.pk]) in [call[:2] for call in sent]
    job.refresh_from_db()
    assert job.dispatched_at is not None and job.celery_task_id.startswith("message-")


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_expression_is_refused(image, user, text):
    with pytest.raises(InvalidInput, match="empty"):
        expression_create(image=image, text=text, author=user)
    assert Expression.objects.count() == 0


def test_expression_length_limit(image, user):
    with pytest.raises(InvalidInput, match="10,000 characters long; the limit is 1,000"):
        expression_create(image=image, text="x" * 10_000, author=user)
    assert expression_create(image=image, text="y" * 1000, author=user).text == "y" * 1000


def test_non_latin_and_emoji_are_kept(image, user):
    text = "左边的猫 🐱 with a hat"
    assert expression_create(image=image, text=text, author=user).text == text


def test_unknown_pipeline_and_bad_config(image, user):
    with pytest.raises(InvalidInput, match="Unknown pipeline 'nope'"):
        expression_create(image=image, text="cat", author=user, pipeline="nope")
    with pytest.raises(InvalidInput, match="JSON object"):
        expression_create(image=image, text="cat", author=user, config=[1, 2])
    with pytest.raises(InvalidInput, match="unknown config key 'top_k'"):
        expression_create(image=image, text="cat", author=user, pipeline="tas", config={"top_k": 3})
    with pytest.raises(InvalidInput, match="'amg.points_per_side' must be in"):
        expression_create(image=image, text="cat", author=user, config={"amg": {"points_per_side": 10000}})
    expression = expression_create(
        image=image, text="cat", author=user, pipeline="tas", config={"lambda_n": 0.5}
    )
    assert job_of(expression).pipeline == "tas" and job_of(expression).config == {"lambda_n": 0.5}


def test_broker_down_leaves_the_job_queued_and_undispatched(
    image, user, monkeypatch, django_capture_on_commit_callbacks
):
    import workers.celery_app

    class DownApp:
        def send_task(self, *args, **kwargs):
            raise ConnectionError("broker unreachable")

    monkeypatch.setattr(workers.celery_app, "app", DownApp())
    with django_capture_on_commit_callbacks(execute=True):
        expression = expression_make(image, user)
    job = job_of(expression)
    assert job.state == JobState.QUEUED and job.dispatched_at is None


# -- claim, progress, succeed, fail ------------------------------------------------------------------


def test_claim_is_exclusive(image, user):
    job = job_of(expression_make(image, user))
    first = job_claim(job_id=job.pk, worker="w1")
    second = job_claim(job_id=job.pk, worker="w2")
    assert (
        first is not None and first.state == JobState.RUNNING and first.worker == "w1" and first.attempts == 1
    )
    assert second is None
    assert job_claim(job_id=999_999, worker="w1") is None


def test_redelivered_message_of_a_dead_worker_is_claimed_again(image, user):
    job = job_of(expression_make(image, user))
    SegmentationJob.objects.filter(pk=job.pk).update(celery_task_id="m-1")
    assert job_claim(job_id=job.pk, worker="w1", task_id="m-1") is not None
    again = job_claim(job_id=job.pk, worker="w2", task_id="m-1")
    assert again is not None and again.attempts == 2 and again.worker == "w2"
    assert job_claim(job_id=job.pk, worker="w3", task_id="other") is None


def test_stale_running_job_can_be_taken_over(image, user, settings):
    job = job_of(expression_make(image, user))
    job_claim(job_id=job.pk, worker="w1")
    SegmentationJob.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.RIS_JOB_STALE_SECONDS + 5)
    )
    taken = job_claim(job_id=job.pk, worker="w2")
    assert taken is not None and taken.worker == "w2" and taken.attempts == 2


def test_cancelled_job_is_not_claimed(image, user):
    job = job_of(expression_make(image, user))
    job_cancel(job=job)
    assert job_claim(job_id=job.pk, worker="w1") is None


def test_succeed_writes_candidates_once(image, user):
    job = job_of(expression_make(image, user))
    job_claim(job_id=job.pk, worker="w1")
    assert job_progress(job_id=job.pk, progress=0.5)
    items = candidate_dicts(image.height, image.width, 3)
    assert job_succeed(job_id=job.pk, candidates=items, timings={"predict_s": 1.5}, config={"v": 0.95})
    assert not job_succeed(job_id=job.pk, candidates=items, timings={})
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED and job.progress == 1.0 and job.finished_at is not None
    assert job.timings == {"predict_s": 1.5} and job.config == {"v": 0.95}
    ranks = list(Candidate.objects.filter(job=job).values_list("rank", flat=True))
    assert ranks == [0, 1, 2]


def test_succeed_after_a_takeover_replaces_earlier_candidates(image, user):
    job = job_of(expression_make(image, user))
    job_claim(job_id=job.pk, worker="w1")
    job_succeed(job_id=job.pk, candidates=candidate_dicts(image.height, image.width, 3))
    SegmentationJob.objects.filter(pk=job.pk).update(state=JobState.RUNNING)  # a second delivery ran it too
    assert job_succeed(job_id=job.pk, candidates=candidate_dicts(image.height, image.width, 2))
    assert Candidate.objects.filter(job=job).count() == 2


def test_succeed_refuses_malformed_candidates(image, user):
    job = job_of(expression_make(image, user))
    job_claim(job_id=job.pk, worker="w1")
    bad = candidate_dicts(image.height, image.width, 1)
    bad[0]["score"] = float("nan")
    with pytest.raises(InvalidInput, match="not finite"):
        job_succeed(job_id=job.pk, candidates=bad)
    twice = candidate_dicts(image.height, image.width, 2)
    twice[1]["rank"] = 0
    with pytest.raises(InvalidInput, match="repeated ranks"):
        job_succeed(job_id=job.pk, candidates=twice)
    assert Candidate.objects.count() == 0


def test_result_of_a_cancelled_running_job_is_discarded(image, user):
    job = job_of(expression_make(image, user))
    job_claim(job_id=job.pk, worker="w1")
    job_cancel(job=job)
    assert not job_progress(job_id=job.pk, progress=0.3)
    assert not job_succeed(job_id=job.pk, candidates=candidate_dicts(image.height, image.width, 2))
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED and Candidate.objects.count() == 0


def test_fail_records_the_error_and_retry_queues_again(image, user, sent, django_capture_on_commit_callbacks):
    job = job_of(expression_make(image, user))
    job_claim(job_id=job.pk, worker="w1")
    assert job_fail(
        job_id=job.pk, error="Model 'clip_tiny' is missing; run python manage.py models make-tiny"
    )
    job.refresh_from_db()
    assert job.state == JobState.FAILED and "clip_tiny" in job.error
    with pytest.raises(Conflict, match="only queued or running"):
        job_cancel(job=job)
    with django_capture_on_commit_callbacks(execute=True):
        job_retry(job=job)
    job.refresh_from_db()
    assert job.state == JobState.QUEUED and job.error == "" and job.attempts == 1
    assert sent[-1][:2] == ("workers.tasks.run_segmentation_job", [job.pk])
    with pytest.raises(Conflict, match="only failed or cancelled"):
        job_retry(job=job)


# -- reconciler ------------------------------------------------------------------------------------


def test_reconcile_resends_lost_and_stale_jobs(image, user, settings, sent):
    settings.RIS_JOB_STALE_SECONDS = 60
    long_ago = timezone.now() - timedelta(seconds=600)
    never_sent = job_of(expression_make(image, user, "never sent"))
    old_message = job_of(expression_make(image, user, "old message"))
    fresh = job_of(expression_make(image, user, "fresh"))
    dead_worker = job_of(expression_make(image, user, "dead worker"))
    SegmentationJob.objects.filter(pk=never_sent.pk).update(created_at=long_ago, dispatched_at=None)
    SegmentationJob.objects.filter(pk=old_message.pk).update(created_at=long_ago, dispatched_at=long_ago)
    SegmentationJob.objects.filter(pk=fresh.pk).update(dispatched_at=timezone.now())
    job_claim(job_id=dead_worker.pk, worker="w1")
    SegmentationJob.objects.filter(pk=dead_worker.pk).update(heartbeat_at=long_ago)

    report = jobs_reconcile()

    assert sorted(report.requeued) == sorted([never_sent.pk, old_message.pk, dead_worker.pk])
    assert report.failed == []
    assert sorted(args[0] for name, args, _ in sent) == sorted(report.requeued)
    dead_worker.refresh_from_db()
    assert dead_worker.state == JobState.QUEUED and dead_worker.dispatched_at is not None
    assert jobs_reconcile().requeued == []  # just sent: nothing to do on the next pass


@pytest.mark.parametrize(("broker_holds", "resent"), [(0, True), (3, False), (None, False)])
def test_reconcile_resends_when_the_broker_lost_its_queue(
    image, user, sent, monkeypatch, broker_holds, resent
):
    from server.ris.services import dispatch

    monkeypatch.setattr(dispatch, "broker_queue_size", lambda queue: broker_holds)
    job = job_of(expression_make(image, user))
    a_minute_ago = timezone.now() - timedelta(seconds=60)  # well inside RIS_JOB_STALE_SECONDS
    SegmentationJob.objects.filter(pk=job.pk).update(created_at=a_minute_ago, dispatched_at=a_minute_ago)
    assert jobs_reconcile().requeued == ([job.pk] if resent else [])


def test_reconcile_gives_up_after_too_many_lost_workers(image, user, settings, sent):
    settings.RIS_JOB_STALE_SECONDS = 60
    settings.RIS_JOB_MAX_ATTEMPTS = 2
    job = job_of(expression_make(image, user))
    SegmentationJob.objects.filter(pk=job.pk).update(
        state=JobState.RUNNING, attempts=2, heartbeat_at=timezone.now() - timedelta(seconds=600)
    )
    report = jobs_reconcile()
    job.refresh_from_db()
    assert report.failed == [job.pk] and job.state == JobState.FAILED
    assert "stopped responding 2 times" in job.error
