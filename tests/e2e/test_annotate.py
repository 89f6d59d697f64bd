"""The annotator's loop in a real browser with a real worker and the real engine (MobileSAM, tiny CLIP):
sign in, create a project, upload a real photo, type an expression, wait for candidates, accept with the
keyboard, refine with SAM clicks, correct with the brush, survive a reload, save, export COCO."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tests.e2e.conftest import shot, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.services]

# On a quiet 2-core machine a job here takes well under a minute; the limit leaves room for a loaded one.
JOB_TIMEOUT_MS = 400_000


@pytest.fixture
def photo(tmp_path):
    from PIL import Image
    from skimage import data

    path = tmp_path / "astronaut.jpg"
    Image.fromarray(data.astronaut()).resize((256, 256), Image.Resampling.BILINEAR).save(path, quality=90)
    return path


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def test_upload_ask_review_correct_export(page, live_server, user, celery_worker, photo, tmp_path):
    from server.ris.models import Image, Review

    started = time.monotonic()
    sign_in(page, live_server)

    # A project, then the photo through the upload page.
    page.fill("#project-name", "Astronauts")
    page.click("#new-project button[type=submit]")
    page.wait_for_url("**/projects/*/")
    page.click("text=Upload images")
    page.set_input_files("#file-input", str(photo))
    row = page.locator(".upload-row").first
    row.locator(".upload-state", has_text="1 stored").wait_for(timeout=JOB_TIMEOUT_MS)  # a loaded machine
    assert page.locator(".upload-row progress").first.get_attribute("value") == "100"
    shot(page, "upload")
    image = Image.objects.get()
    assert (image.width, image.height) == (256, 256)

    # The same photo again is recognised as a duplicate.
    page.set_input_files("#file-input", str(photo))
    page.locator(".upload-details .dup").wait_for()
    assert Image.objects.count() == 1

    # Two expressions with a cheap proposal setting; the jobs run on the real worker (the second one
    # finds the image's proposals in the engine's cache).
    page.click(f"a[href='/images/{image.pk}/']")
    page.wait_for_url(f"**/images/{image.pk}/")
    page.click("details summary")
    page.fill("#expression-config", json.dumps({"amg": {"points_per_side": 8}}))
    for text in ("the astronaut's face", "the flag"):
        page.fill("#expression-text", text)
        page.click("#expression-form button[type=submit]")
        page.locator(".expression-text", has_text=text).wait_for()
    page.locator(".badge-job-queued, .badge-job-running, .badge-job-succeeded").first.wait_for()
    page.wait_for_function(
        "() => document.querySelectorAll('.badge-job-succeeded').length === 2", timeout=JOB_TIMEOUT_MS
    )
    shot(page, "image-page")

    # Review: candidates drawn, keys choose and accept; the loop moves on without reloading the page.
    page.click("text=Review this image")
    page.wait_for_url("**/review/?*")
    page.locator(".candidate-btn").first.wait_for()
    assert page.locator("#item-text").inner_text() == "“the astronaut's face”"
    n_candidates = page.locator(".candidate-btn").count()
    assert n_candidates >= 1
    page.evaluate("() => { window.__sameDocument = true; }")
    page.keyboard.press("1")
    assert page.locator(".candidate.is-chosen").count() == 1
    page.keyboard.press("d")
    page.locator("table.components").first.wait_for()
    shot(page, "review-candidates")
    overlay_pixels = page.evaluate(
        "() => { const c = document.getElementById('overlay'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return [c.width, c.height, n]; }"
    )
    assert overlay_pixels[:2] == [256, 256] and overlay_pixels[2] > 0
    page.keyboard.press("a")
    page.locator(".toast-ok", has_text="Accepted").wait_for()
    page.locator("#item-text", has_text="the flag").wait_for()
    assert page.evaluate("() => window.__sameDocument === true")
    review = Review.objects.get()
    assert review.decision == "accepted" and review.candidate.rank == 0
    assert review.expression.text == "the astronaut's face"
    page.locator(".candidate-btn").first.wait_for()
    page.keyboard.press("r")
    page.locator("#item-review", has_text="Rejected").wait_for()
    assert Review.objects.order_by("-id").first().decision == "rejected"
    page.keyboard.press("ArrowLeft")
    page.locator("#item-text", has_text="the astronaut's face").wait_for()
    page.locator("#item-review", has_text="Accepted").wait_for()
    assert page.evaluate("() => window.__sameDocument === true")

    # Opacity, hide, and the shortcut sheet.
    page.keyboard.press("h")
    assert page.locator("#overlay").is_hidden()
    page.keyboard.press("h")
    page.keyboard.press("?")
    page.locator("#shortcut-sheet[open]").wait_for()
    shot(page, "shortcut-sheet")
    page.keyboard.press("Escape")
    assert page.locator("#shortcut-sheet[open]").count() == 0

    # Correct: SAM clicks on the chosen candidate (through the real worker), then the brush.
    page.keyboard.press("1")
    page.keyboard.press("c")
    box = page.locator("#overlay").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.35)
    page.locator("#refine-status", has_text="SAM refined the mask").wait_for(timeout=JOB_TIMEOUT_MS)
    page.keyboard.press("b")
    y = box["y"] + box["height"] * 0.95
    page.mouse.move(box["x"] + box["width"] * 0.05, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.3, y, steps=8)
    page.mouse.up()
    scale = 256 / box["width"]
    painted = (int(box["width"] * 0.15 * scale), int(box["height"] * 0.95 * scale))  # (x, y) in image pixels

    # The correction survives a reload (kept in localStorage) and is saved with S.
    page.wait_for_timeout(500)
    page.reload()
    page.locator("#wip-banner", has_text="Unsaved correction restored").wait_for()
    shot(page, "review-correction-restored")
    page.keyboard.press("s")
    page.locator(".toast-ok", has_text="Correction saved").wait_for()
    latest = Review.objects.filter(expression__text="the astronaut's face").order_by("-id").first()
    assert latest.decision == "corrected" and latest.corrected_rle is not None
    corrected = _decode(latest.corrected_rle)
    assert corrected.shape == (256, 256)
    assert corrected[painted[1], painted[0]]
    refined = page.evaluate("() => localStorage.length")
    assert refined == 0

    # Export COCO from the project page and read it back.
    page.goto(f"{live_server.url}/projects/{image.project_id}/")
    page.locator(".badge-done").wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.image-card img')].every((i) => i.complete && i.naturalWidth > 0)"
    )
    shot(page, "image-list")
    with page.expect_download() as download_info:
        page.click("text=Export COCO")
    target = tmp_path / "export.json"
    download_info.value.save_as(target)
    coco = COCO(str(target))
    (ann,) = coco.loadAnns(coco.getAnnIds())
    assert np.array_equal(coco.annToMask(ann).astype(bool), corrected)
    assert ann["expression"] == "the astronaut's face" and ann["decision"] == "corrected"
    assert not page.js_errors, page.js_errors
    page.goto(f"{live_server.url}/")
    shot(page, "project-list")
    print(f"annotate flow: {time.monotonic() - started:.1f} s, {n_candidates} candidates")


def test_failed_job_shows_error_and_retry(page, live_server, user, celery_worker, photo):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from server.ris.models import SegmentationJob
    from server.ris.services import image_upload, project_create

    project = project_create(name="Failures", created_by=user)
    stored, _ = image_upload(
        project=project, files=[SimpleUploadedFile("a.jpg", photo.read_bytes())], uploaded_by=user
    )
    image = stored[0].image
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/images/{image.pk}/")
    page.fill("#expression-text", "the helmet")
    page.click("details summary")
    # A config the pipeline refuses is answered at the door, naming the key; no job is made.
    page.fill("#expression-config", json.dumps({"no_such_setting": 1}))
    page.click("#expression-form button[type=submit]")
    refused = page.locator("#expression-form .form-error")
    refused.wait_for()
    assert "no_such_setting" in refused.inner_text() and not SegmentationJob.objects.exists()
    shot(page, "config-refused")
    # A valid config whose model this machine lacks fails in the worker at once, in words, with the command that
    # fixes it (the engine checks the config's models before any work).
    page.fill("#expression-config", json.dumps({"clip_model": "clip_vit_b_16"}))
    page.click("#expression-form button[type=submit]")
    error = page.locator(".job-error")
    error.wait_for(timeout=JOB_TIMEOUT_MS)
    assert "clip_vit_b_16" in error.inner_text() and "models fetch clip_vit_b_16" in error.inner_text()
    shot(page, "job-failed")
    job = SegmentationJob.objects.get()
    assert job.state == "failed" and job.attempts == 1
    page.click(".job-status button:has-text('Retry')")
    page.locator(".job-error").wait_for(timeout=JOB_TIMEOUT_MS)
    for _ in range(100):
        job.refresh_from_db()
        if job.state == "failed" and job.attempts == 2:
            break
        time.sleep(0.3)
    assert job.state == "failed" and job.attempts == 2
