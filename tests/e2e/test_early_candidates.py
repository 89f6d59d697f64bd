"""Early candidates on the review page, in real Chromium: the stage "waiting for image preparation" while
another worker prepares the image, the early candidates in place as soon as they are stored (labelled
"early candidates — better ones coming"), then the final ones in their place without a reload and with
the annotator's choice kept (the final candidate most like the chosen early one); an early candidate
accepted while the job runs stays the verdict's mask after the final ones come; Cancel while early
candidates are shown ends the job, and its final result is discarded.

The worker's writes are made here through its services (``job_progress``, ``job_partial_candidates``,
``job_succeed``), as in ``test_progress.py``: these tests are about the page. Screenshots:
``early-waiting``, ``early-candidates``, ``early-then-final``, ``early-accepted-kept``, ``early-cancelled``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.e2e.conftest import shot, sign_in
from tests.e2e.test_review_page import _candidates, _ellipse, _masks, _photo_file

pytestmark = [pytest.mark.browser]

WAIT_MS = 60_000  # the page polls every 0.8 to 3 s; a loaded machine gets a generous ceiling


def _early_masks() -> list[np.ndarray]:
    """What a coarse grid finds: the body a little smaller, the flag a little off (like final mask 2)."""
    return [_ellipse(150, 205, 70, 60), _ellipse(226, 52, 36, 28)]


@pytest.fixture
def running_job(user, project, settings, monkeypatch):
    """A job on the astronaut, claimed by a worker (attempt 1), nothing sent to a broker."""
    from server.ris.services import expression_create, image_upload, job_claim

    settings.RIS_PREPARE_ON_UPLOAD = False
    monkeypatch.setattr("server.ris.services.expressions.job_enqueue_on_commit", lambda **kwargs: None)
    stored, rejected = image_upload(project=project, files=[_photo_file()], uploaded_by=user)
    assert not rejected
    expression = expression_create(image=stored[0].image, text="the flag", author=user)
    job = job_claim(job_id=expression.jobs.get().pk, worker="w1")
    assert job is not None and job.attempts == 1
    return job


def _open(page, live_server, job) -> None:
    sign_in(page, live_server)
    page.goto(
        f"{live_server.url}/projects/{job.expression.image.project_id}/review/?expression={job.expression_id}"
    )
    page.evaluate("() => { window.__sameDocument = true; }")  # gone if the page reloads


def test_waiting_then_early_then_final_candidates_in_place(page, live_server, running_job):
    from server.ris.services import job_partial_candidates, job_progress, job_succeed

    job = running_job
    assert job_progress(
        job_id=job.pk,
        progress=0.3,
        attempt=1,
        stage={"name": "waiting", "done": 384, "total": 1024, "unit": "points", "estimate_s": 40.0},
    )
    _open(page, live_server, job)
    waiting = page.locator(".job-stage", has_text="Waiting for image preparation, 384 of 1024 points")
    waiting.wait_for(timeout=WAIT_MS)
    left = re.search(r"about (\d+) s left", waiting.inner_text())  # 40 s as reported, counting down since
    assert left and 20 <= int(left.group(1)) <= 40, waiting.inner_text()
    assert page.locator("#accept").is_disabled()  # nothing to accept yet
    shot(page, "early-waiting")

    # The coarse grid's ranking arrives: shown at once, labelled, and acceptable.
    assert job_partial_candidates(job_id=job.pk, candidates=_candidates(_early_masks()), attempt=1)
    assert job_progress(
        job_id=job.pk,
        progress=0.4,
        attempt=1,
        stage={"name": "proposals", "done": 256, "total": 1024, "unit": "points"},
    )
    note = page.locator(".early-note")
    note.wait_for(timeout=WAIT_MS)
    assert note.inner_text() == "Early candidates — better ones coming"
    assert page.locator(".candidate-btn").count() == 2
    assert page.locator("#accept").is_enabled()
    page.locator(".candidate-btn").nth(1).click()  # the annotator picks the flag
    assert page.locator(".candidate.is-chosen .cand-head").inner_text().startswith("2")
    page.mouse.move(1, 1)
    shot(page, "early-candidates")

    # The full run's candidates replace them in place; the choice moves to the final flag (mask 2).
    assert job_succeed(job_id=job.pk, candidates=_candidates(_masks()), attempt=1)
    page.locator(".early-note").wait_for(state="detached", timeout=WAIT_MS)
    page.locator(".candidate-btn").nth(3).wait_for(timeout=WAIT_MS)
    assert page.locator(".candidate-btn").count() == 4
    assert page.locator(".candidate.is-chosen .cand-head").inner_text().startswith("3"), page.locator(
        ".candidate.is-chosen"
    ).inner_text()
    assert page.evaluate("() => window.__sameDocument === true")  # no reload
    assert page.locator("#accept").is_enabled()
    assert "Candidates ready" in page.locator(".job-status").inner_text()
    page.mouse.move(1, 1)  # off the cards: the chosen candidate is drawn, not the one under the pointer
    shot(page, "early-then-final")


def test_the_image_page_offers_early_candidates_for_review(page, live_server, running_job):
    from server.ris.services import job_partial_candidates

    job = running_job
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/images/{job.expression.image_id}/")
    page.locator(".job-status", has_text="Running").wait_for(timeout=WAIT_MS)
    assert page.locator("a", has_text="Review early candidates").count() == 0
    assert job_partial_candidates(job_id=job.pk, candidates=_candidates(_early_masks()), attempt=1)
    link = page.locator("a", has_text="Review early candidates")
    link.wait_for(timeout=WAIT_MS)
    link.click()
    page.locator(".early-note").wait_for(timeout=WAIT_MS)
    assert page.locator(".candidate-btn").count() == 2


def test_an_early_candidate_accepted_while_running_stays_the_verdict(page, live_server, running_job):
    from server.ris.models import Candidate, Review
    from server.ris.services import job_partial_candidates, job_succeed

    job = running_job
    assert job_partial_candidates(job_id=job.pk, candidates=_candidates(_early_masks()), attempt=1)
    _open(page, live_server, job)
    page.locator(".early-note").wait_for(timeout=WAIT_MS)
    page.locator(".candidate-btn").nth(1).click()
    page.locator("#accept").click()
    page.locator(".toast", has_text="Accepted").wait_for(timeout=WAIT_MS)
    review = Review.objects.get(expression_id=job.expression_id)
    assert review.decision == "accepted" and review.candidate.partial and review.candidate.rank == 1

    # The job goes on; its final candidates come, and the accepted early one stays beside them, chosen.
    assert job_succeed(job_id=job.pk, candidates=_candidates(_masks()), attempt=1)
    kept = page.locator(".candidate", has=page.locator(".badge-early"))
    kept.wait_for(timeout=WAIT_MS)
    assert page.locator(".candidate-btn").count() == 5
    assert list(Candidate.objects.filter(job=job, partial=True).values_list("rank", flat=True)) == [1]
    review.refresh_from_db()
    assert review.candidate_id is not None and review.candidate.partial
    assert "Accepted" in page.locator("#item-review").inner_text()
    page.mouse.move(1, 1)
    shot(page, "early-accepted-kept")


def test_cancel_while_early_candidates_are_shown(page, live_server, running_job):
    from server.ris.models import JobState, SegmentationJob
    from server.ris.services import job_partial_candidates, job_succeed

    job = running_job
    assert job_partial_candidates(job_id=job.pk, candidates=_candidates(_early_masks()), attempt=1)
    _open(page, live_server, job)
    page.locator(".early-note").wait_for(timeout=WAIT_MS)
    page.locator(".job-status button", has_text="Cancel").click()
    page.locator(".job-status", has_text="Cancelled").wait_for(timeout=WAIT_MS)
    assert SegmentationJob.objects.get(pk=job.pk).state == JobState.CANCELLED
    assert page.locator(".early-note").count() == 0  # a cancelled job's early candidates are not offered
    assert page.locator("#accept").is_disabled()
    assert "the job was cancelled" in page.locator("#candidates").inner_text()
    assert not job_succeed(
        job_id=job.pk, candidates=_candidates(_masks()), attempt=1
    )  # the worker's late result
    assert page.locator(".job-status button", has_text="Retry").is_visible()
    page.mouse.move(1, 1)
    shot(page, "early-cancelled")
