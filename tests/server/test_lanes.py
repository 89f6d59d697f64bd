"""Lanes at the door: which lane a job joins, which queue its message goes to, and the queue position
(same lane only, only what the asker may see, right after Retry and Cancel)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from server.ris import selectors
from server.ris.errors import InvalidInput
from server.ris.models import JobState, SegmentationJob
from server.ris.services import expression_create, job_cancel, job_claim, job_fail, job_retry, project_create
from server.ris.services.jobs import job_dispatch, job_progress, job_retry_lane, jobs_reconcile
from server.web.services.bulk import expressions_bulk_create
from tests.server.factories import image_make, job_of
from workers.lanes import BACKGROUND, INTERACTIVE, task_routes

pytestmark = pytest.mark.django_db


@pytest.fixture
def image(project, user):
    return image_make(project, user)


@pytest.fixture
def sent(monkeypatch):
    """Messages sent to the broker, as (task name, args, queue)."""
    messages: list[tuple[str, list, str | None]] = []

    def record(name, *, args, priority=None, queue=None):
        messages.append((name, list(args), queue))
        return f"message-{len(messages)}"

    monkeypatch.setattr("server.ris.services.dispatch.task_send", record)
    monkeypatch.setattr("server.ris.services.images.task_send", record)
    return messages


def _job(image, user, text, lane=INTERACTIVE):
    return job_of(expression_create(image=image, text=text, author=user, lane=lane))


def test_routes_put_each_model_task_in_its_lane():
    routes = task_routes()
    assert routes["workers.web_tasks.refine_mask"] == {"queue": INTERACTIVE}
    assert routes["workers.tasks.run_segmentation_job"] == {"queue": INTERACTIVE}
    assert routes["workers.tasks.prepare_image"] == {"queue": BACKGROUND}
    assert routes["workers.benchmark_tasks.run_benchmark_shard"] == {"queue": BACKGROUND}


def test_a_job_is_sent_to_its_own_lane_and_an_upload_prepares_in_the_background(
    project, user, sent, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        image = image_make(project, user)
    assert sent == [("workers.tasks.prepare_image", [image.pk], None)]  # routed: background
    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        typed = _job(image, user, "the cat")
        bulk = _job(image, user, "the dog", lane=BACKGROUND)
    # The interactive lane is the task's route (None: routed); another lane names its queue.
    assert [(m[1], m[2]) for m in sent] == [([typed.pk], None), ([bulk.pk], BACKGROUND)]
    assert job_dispatch(job_id=bulk.pk) and sent[-1][2] == BACKGROUND


def test_bulk_rows_join_the_background_lane(project, user, image):
    result = expressions_bulk_create(
        project=project,
        author=user,
        data=b"image,expression\nphoto.png,the left one\n",
        name="rows.csv",
    )
    assert not result.errors, result.errors
    assert list(SegmentationJob.objects.values_list("lane", flat=True)) == [BACKGROUND]


def test_queue_position_counts_only_the_same_lane(image, user):
    first = _job(image, user, "one")
    bulk = [_job(image, user, f"bulk {i}", lane=BACKGROUND) for i in range(3)]
    second = _job(image, user, "two")
    assert selectors.job_queue_position(job=first, user=user) == 0
    assert selectors.job_queue_position(job=second, user=user) == 1  # three bulk jobs are not ahead
    assert [selectors.job_queue_position(job=j, user=user) for j in bulk] == [0, 1, 2]


def test_queue_position_never_counts_other_peoples_projects(image, user, other_user):
    theirs = image_make(project_create(name="Theirs", created_by=other_user), other_user, name="t.png")
    for i in range(4):
        _job(theirs, other_user, f"their {i}")
    mine = _job(image, user, "mine")
    assert selectors.job_queue_position(job=mine, user=user) == 0
    their_last = SegmentationJob.objects.filter(expression__image=theirs).order_by("-pk").first()
    assert selectors.job_queue_position(job=their_last, user=other_user) == 3


def test_queue_position_is_right_after_cancel_and_retry(image, user):
    jobs = [_job(image, user, f"thing {i}") for i in range(3)]
    job_cancel(job=jobs[0])
    jobs[2].refresh_from_db()
    assert selectors.job_queue_position(job=jobs[2], user=user) == 1  # the cancelled one left the lane
    # A Retry joins the back of the lane with a fresh enqueue time, whatever its creation time (a recent
    # job keeps its lane; an old one goes to the background: see the next test).
    SegmentationJob.objects.filter(pk=jobs[0].pk).update(created_at=timezone.now() - timedelta(minutes=20))
    retried = job_retry(job=SegmentationJob.objects.get(pk=jobs[0].pk))
    assert retried.enqueued_at > jobs[2].enqueued_at
    assert selectors.job_queue_position(job=retried, user=user) == 2
    assert selectors.job_queue_position(job=jobs[1], user=user) == 0


def _failed(job, *, age_s: float = 0.0):
    job_claim(job_id=job.pk, worker="w")
    job_fail(job_id=job.pk, error="boom")
    if age_s:
        SegmentationJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(seconds=age_s))
    return SegmentationJob.objects.get(pk=job.pk)


def test_a_retry_of_a_recent_job_keeps_its_lane_and_of_an_old_one_goes_to_the_background(
    image, user, settings, sent, django_capture_on_commit_callbacks
):
    settings.RIS_RETRY_BACKGROUND_AFTER_S = 1800
    recent = _failed(_job(image, user, "just typed"), age_s=60)
    old = _failed(_job(image, user, "typed yesterday"), age_s=1801)
    bulk = _failed(_job(image, user, "a bulk row", lane=BACKGROUND), age_s=60)
    assert job_retry_lane(job=recent) == INTERACTIVE
    assert job_retry_lane(job=old) == BACKGROUND and job_retry_lane(job=bulk) == BACKGROUND
    with django_capture_on_commit_callbacks(execute=True):
        retried = [job_retry(job=job) for job in (recent, old, bulk)]
    assert [job.lane for job in retried] == [INTERACTIVE, BACKGROUND, BACKGROUND]
    assert [m[2] for m in sent] == [None, BACKGROUND, BACKGROUND]  # None: the interactive route
    # Queue positions right after the Retry: each counts only its own lane, in Retry order.
    assert selectors.job_queue_position(job=retried[0], user=user) == 0
    assert selectors.job_queue_position(job=retried[1], user=user) == 0
    assert selectors.job_queue_position(job=retried[2], user=user) == 1


def test_the_api_retry_follows_the_age_of_the_job(api_client, image, user):
    old = _failed(_job(image, user, "typed last week"), age_s=7 * 86400)
    response = api_client.post(f"/api/jobs/{old.pk}/retry/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["lane"] == BACKGROUND and body["state"] == "queued" and body["queue_position"] == 0


def test_a_bulk_retry_sends_every_job_to_the_background_lane(api_client, image, user):
    waiting = _job(image, user, "already in the background", lane=BACKGROUND)
    failed = [_failed(_job(image, user, f"typed {i}"), age_s=5) for i in range(3)]
    response = api_client.post("/api/jobs/retry/", {"jobs": [j.pk for j in failed]}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert [item["id"] for item in body] == [j.pk for j in failed]
    assert {item["lane"] for item in body} == {BACKGROUND}
    # Right after the Retry they queue behind the background job already waiting, in the order given.
    assert [item["queue_position"] for item in body] == [1, 2, 3]
    assert selectors.job_queue_position(job=waiting, user=user) == 0


def test_a_bulk_retry_is_all_or_nothing_and_refuses_bad_input_in_words(api_client, image, user, other_user):
    failed = _failed(_job(image, user, "failed"))
    queued = _job(image, user, "still queued")
    response = api_client.post("/api/jobs/retry/", {"jobs": [failed.pk, queued.pk]}, format="json")
    assert response.status_code == 409 and "only failed or cancelled" in response.json()["error"]
    failed.refresh_from_db()
    assert failed.state == JobState.FAILED and failed.lane == INTERACTIVE  # nothing was retried
    for bad in ({"jobs": []}, {"jobs": [failed.pk, failed.pk]}, {"jobs": ["one"]}, {}, {"jobs": [0]}):
        response = api_client.post("/api/jobs/retry/", bad, format="json")
        assert response.status_code == 400, (bad, response.content)
        assert response.json()["error"]
    theirs = image_make(project_create(name="Theirs", created_by=other_user), other_user, name="t.png")
    their_job = _failed(_job(theirs, other_user, "theirs"))
    response = api_client.post("/api/jobs/retry/", {"jobs": [failed.pk, their_job.pk]}, format="json")
    assert response.status_code == 404
    failed.refresh_from_db()
    assert failed.state == JobState.FAILED


def test_the_reconciler_sends_a_lost_job_again_in_the_lane_it_had(image, user, sent, settings):
    old = _job(image, user, "typed long ago")
    bulk = _job(image, user, "a bulk row", lane=BACKGROUND)
    for job in (old, bulk):
        job_claim(job_id=job.pk, worker="gone")
    long_ago = timezone.now() - timedelta(seconds=settings.RIS_JOB_STALE_SECONDS + 60)
    SegmentationJob.objects.filter(pk__in=[old.pk, bulk.pk]).update(
        created_at=long_ago - timedelta(days=1), started_at=long_ago, heartbeat_at=long_ago
    )
    sent.clear()
    report = jobs_reconcile()
    assert sorted(report.requeued) == sorted([old.pk, bulk.pk])
    lanes = dict(SegmentationJob.objects.values_list("pk", "lane"))
    assert lanes[old.pk] == INTERACTIVE and lanes[bulk.pk] == BACKGROUND  # an old job is not moved
    assert {m[1][0]: m[2] for m in sent} == {old.pk: INTERACTIVE, bulk.pk: BACKGROUND}


def test_retry_may_move_a_job_to_the_background_lane(image, user):
    job = _job(image, user, "old")
    job_claim(job_id=job.pk, worker="w")
    job_fail(job_id=job.pk, error="boom")
    retried = job_retry(job=SegmentationJob.objects.get(pk=job.pk), lane=BACKGROUND)
    assert retried.lane == BACKGROUND and retried.state == JobState.QUEUED and retried.stage == {}
    job_claim(job_id=job.pk, worker="w")
    job_fail(job_id=job.pk, error="boom")
    with pytest.raises(InvalidInput, match="Unknown lane"):
        job_retry(job=SegmentationJob.objects.get(pk=job.pk), lane="express")


def test_stage_and_timing_are_reported(image, user):
    job = _job(image, user, "x")
    assert selectors.job_timing(job=job)["estimate_s"] is None
    job_claim(job_id=job.pk, worker="w")
    stage = {"name": "proposals", "done": 2, "total": 8, "unit": "point batches", "estimate_s": 30.0}
    assert job_progress(job_id=job.pk, progress=0.3, stage=stage)
    job.refresh_from_db()
    assert job.stage == stage
    timing = selectors.job_timing(job=job, now=job.heartbeat_at + timedelta(seconds=10))
    assert timing["estimate_s"] == pytest.approx(20.0)
    assert timing["elapsed_s"] >= 10.0


def test_api_shows_lane_stage_and_position(api_client, image, user):
    response = api_client.post(f"/api/images/{image.pk}/expressions/", {"text": "the cat"}, format="json")
    assert response.status_code == 201, response.content
    job = response.json()["job"]
    assert job["lane"] == INTERACTIVE and job["queue_position"] == 0 and job["stage"] == {}
    assert job["elapsed_s"] >= 0 and job["estimate_s"] is None
