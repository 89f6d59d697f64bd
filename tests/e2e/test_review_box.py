"""SAM box prompt on the review page, answered by the real worker with real MobileSAM (issue 18).

Drag a box with the SAM box tool (X): the page posts ``box_xyxy`` in image pixels, the worker's
``SamPredictor`` answers, and the mask it draws lies inside the box; saving stores it as the correction.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.e2e.conftest import shot, sign_in
from tests.e2e.test_review_page import HEIGHT, WIDTH, review_setup  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.services]

REFINE_TIMEOUT_MS = 400_000  # a loaded 2-core machine; a quiet one answers in seconds


def test_box_prompt_with_real_sam(page, live_server, user, review_setup, celery_worker):  # noqa: F811
    from server.ris.models import Review
    from server.ris.services import job_cancel
    from server.web.models import RefineRequest

    s = review_setup
    # The one worker takes messages in order: the queued job of the setup would hold the refine back.
    job_cancel(job=s["waiting"].jobs.get())
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/projects/{s['project'].pk}/review/?expression={s['ready'].pk}")
    page.locator(".candidate-btn canvas.thumb").first.wait_for()
    page.keyboard.press("x")
    page.locator("#refine-status", has_text="Drag a box").wait_for()

    # The astronaut's head: image pixels about (95, 0) to (205, 110).
    box = page.locator("#overlay").bounding_box()
    to_screen = lambda x, y: (box["x"] + box["width"] * x / WIDTH, box["y"] + box["height"] * y / HEIGHT)  # noqa: E731
    page.mouse.move(*to_screen(95, 2))
    page.mouse.down()
    page.mouse.move(*to_screen(150, 60), steps=4)
    page.mouse.move(*to_screen(205, 110), steps=4)
    page.mouse.up()
    page.locator("#box-rect").wait_for()
    page.locator("#refine-status", has_text="SAM refined the mask").wait_for(timeout=REFINE_TIMEOUT_MS)
    shot(page, "review-box-prompt")

    refine = RefineRequest.objects.get()
    assert refine.points_xy == [] and refine.mask_rle is None
    x0, y0, x1, y1 = refine.box_xyxy
    assert abs(x0 - 95) < 2 and abs(y0 - 2) < 2 and abs(x1 - 205) < 2 and abs(y1 - 110) < 2
    result = mask_utils.decode(
        {"size": refine.result_rle["size"], "counts": refine.result_rle["counts"].encode()}
    )
    assert result.sum() > 500
    inside = result[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1].sum()
    assert inside / result.sum() > 0.9  # SAM segments what the box holds

    page.keyboard.press("s")
    page.locator(".toast-ok", has_text="Correction saved").wait_for()
    saved = Review.objects.get(expression=s["ready"])
    stored = mask_utils.decode(
        {"size": saved.corrected_rle["size"], "counts": saved.corrected_rle["counts"].encode()}
    )
    assert np.array_equal(stored, result)
    assert not page.js_errors, json.dumps(page.js_errors)
