"""The job status on the image page, in a browser, without a worker: its lane and place while queued (only
its own lane, only projects the viewer may read), then its stage, points done, elapsed time and estimate
while running, updated in place by the page's polling. Screenshots: ``job-queued-lane``, ``job-stage``."""

from __future__ import annotations

import pytest
from django.utils import timezone

from tests.e2e.conftest import shot, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.services]

WAIT_MS = 60_000  # the page polls every 0.8 to 3 s; a loaded machine gets a generous ceiling


def test_queued_place_then_stage_and_estimate(
    page, live_server, user, other_user, png_bytes, settings, monkeypatch
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from server.ris.models import JobState, SegmentationJob
    from server.ris.services import expression_create, image_upload, project_create

    settings.RIS_PREPARE_ON_UPLOAD = False
    monkeypatch.setattr("server.ris.services.expressions.job_enqueue_on_commit", lambda **kwargs: None)

    def image_of(owner, name, colour):
        project = project_create(name=f"Project of {owner.username}", created_by=owner)
        stored, _ = image_upload(
            project=project, files=[SimpleUploadedFile(name, png_bytes(color=colour))], uploaded_by=owner
        )
        return stored[0].image

    theirs = image_of(other_user, "theirs.png", (200, 10, 10))
    for i in range(3):  # another person's work: never counted for alice
        expression_create(image=theirs, text=f"their thing {i}", author=other_user)
    mine = image_of(user, "mine.png", (10, 200, 10))
    expression_create(image=mine, text="the earlier one", author=user)  # ahead, in the same lane
    for i in range(2):  # bulk rows: the background lane, not ahead of a typed expression
        expression_create(image=mine, text=f"bulk row {i}", author=user, lane="background")
    typed = expression_create(image=mine, text="the green square", author=user)
    job = typed.jobs.get()

    sign_in(page, live_server)
    page.goto(f"{live_server.url}/images/{mine.pk}/")
    status = page.locator(".job-status", has=page.locator(".job-stage", has_text="In the interactive lane"))
    status.first.wait_for(timeout=WAIT_MS)
    # Mine: "the earlier one" is ahead; the bulk rows (background lane) and the other person's jobs are not.
    assert "Queued: 1 job ahead" in status.first.inner_text(), status.first.inner_text()
    shot(page, "job-queued-lane")

    SegmentationJob.objects.filter(pk=job.pk).update(
        state=JobState.RUNNING,
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
        progress=0.32,
        stage={"name": "proposals", "done": 384, "total": 1024, "unit": "points", "estimate_s": 95.0},
    )
    running = page.locator(".job-stage", has_text="Finding masks, 384 of 1024 points")
    running.wait_for(timeout=WAIT_MS)
    text = running.inner_text()
    assert "so far" in text and "about 1 min" in text, text
    shot(page, "job-stage")
