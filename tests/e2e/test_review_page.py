"""The review page in real Chromium (issue 18): the top candidate alone with a contrasting fill and a
two-tone outline, thumbnails with score parts in words, hover and number keys, the saved verdict shown
as saved, "next ready item" order, Undo of decisions (toast and Ctrl+Z) with a history per expression,
toasts clear of navigation, Accept disabled without candidates, zoom and pan, and the painted mask equal
to the stored RLE up to the image's last row (the bottom-edge artefact).

The candidates are written straight into the database (no worker): these tests are about the page. The
SAM box prompt, which needs the real worker, is in ``test_review_box.py``.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.e2e.conftest import shot, sign_in

pytestmark = [pytest.mark.browser]

WIDTH, HEIGHT = 300, 211  # not square: SAM's masks of such images thin out along the bottom row


def _photo_file(name: str = "astronaut.png"):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR).save(buffer, "PNG")
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="image/png")


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def _masks() -> list[np.ndarray]:
    body = _ellipse(150, 200, 80, 70)  # reaches the bottom border
    body[-1, ::3] = False  # a ragged last row, as SAM leaves on non-square images: painted as stored
    return [body, _ellipse(110, 60, 30, 35), _ellipse(230, 50, 40, 30), _ellipse(40, 120, 25, 60)]


def _candidates(masks: list[np.ndarray]) -> list[dict]:
    out = []
    for rank, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        out.append(
            {
                "rank": rank,
                "rle": {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode()},
                "bbox_xyxy": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
                "area": int(mask.sum()),
                "score": 30.0 - rank,
                "components": {"s_global": 31.2 - rank, "s_local": 28.0 - rank, "score": 30.0 - rank},
            }
        )
    return out


@pytest.fixture
def review_setup(user, project):
    """An image with three expressions: two ready (4 candidates, 0 candidates) and one still queued;
    the queued one was typed first, so "next ready item" order must put it last."""
    from server.ris.services import expression_create, image_upload, job_succeed
    from tests.server.factories import job_make_running, job_of

    stored, rejected = image_upload(project=project, files=[_photo_file()], uploaded_by=user)
    assert not rejected
    image = stored[0].image
    waiting = expression_create(image=image, text="the flag, still waiting", author=user)
    ready = expression_create(image=image, text="the astronaut", author=user)
    empty = expression_create(image=image, text="the unicorn", author=user)
    masks = _masks()
    assert job_succeed(job_id=job_make_running(job_of(ready)).pk, candidates=_candidates(masks))
    assert job_succeed(job_id=job_make_running(job_of(empty)).pk, candidates=[])
    return {
        "project": project,
        "image": image,
        "waiting": waiting,
        "ready": ready,
        "empty": empty,
        "masks": masks,
    }


def _painted_rgba(page) -> np.ndarray:
    """The overlay canvas, ``H x W x 4`` uint8."""
    flat = page.evaluate(
        "() => { const c = document.getElementById('overlay');"
        " return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }"
    )
    return np.asarray(flat, np.uint8).reshape(HEIGHT, WIDTH, 4)


def _painted(page) -> np.ndarray:
    """Alpha of the overlay canvas, ``H x W`` uint8."""
    return _painted_rgba(page)[..., 3]


def _painted_mask(page) -> np.ndarray:
    """Pixels painted as mask (fill or white inner outline; the black outer band is outside the mask)."""
    rgba = _painted_rgba(page).astype(int)
    return (rgba[..., 3] > 0) & (rgba[..., :3].sum(-1) > 0)


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=steps)


def _overlaps(a: dict, b: dict) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


def test_display_flow_undo_and_saved(page, live_server, user, review_setup):
    from server.ris.models import Activity, Review

    s = review_setup
    masks = s["masks"]
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/projects/{s['project'].pk}/review/")
    page.locator(".candidate-btn canvas.thumb").first.wait_for()

    # "Next ready item" order: the item with candidates comes first although the queued one is older.
    assert page.locator("#item-text").inner_text() == "“the astronaut”"
    assert "2 ready" in page.locator("#item-pos").inner_text()

    # The top candidate alone: every pixel of its mask painted, nothing beyond its outline band.
    page.wait_for_function("() => document.getElementById('stage').dataset.shown === 'candidate-0'")
    page.wait_for_timeout(300)
    alpha = _painted(page)
    assert (alpha[masks[0]] > 0).all()
    ring = int(
        page.evaluate(
            "() => Math.max(1, Math.round(2 * 300 / document.getElementById('overlay').getBoundingClientRect().width))"
        )
    )
    assert not (alpha[~_dilate(masks[0], ring)] > 0).any()
    assert not (alpha[masks[1] & ~_dilate(masks[0], ring)] > 0).any()  # candidate 2 is not drawn
    # The outline is opaque white inside the edge, the fill translucent: distinguishable from the photo.
    assert alpha.max() == 255 and 0 < int(np.median(alpha[masks[0]])) < 255
    assert page.locator("#stage-label").inner_text().startswith("Candidate 1 of 4 (top)")
    shot(page, "review-top-candidate-alone")

    # Bottom-edge artefact: the painted mask is the stored mask, pixel for pixel, its ragged last row
    # included; nothing dark is painted in that row's gaps; and image and canvas share one box.
    shown = _painted_mask(page)
    assert np.array_equal(shown, masks[0])
    assert not (alpha[-1][~masks[0][-1]] > 0).any()
    img_box = page.locator("#stage-image").bounding_box()
    canvas_box = page.locator("#overlay").bounding_box()
    for key in ("x", "y", "width", "height"):
        assert abs(img_box[key] - canvas_box[key]) < 0.01, (key, img_box, canvas_box)

    # Thumbnails with the score parts in words.
    cards = page.locator(".candidate-btn")
    assert cards.count() == 4 and page.locator("canvas.thumb").count() == 4
    assert (
        "whole-image match 31.2" in cards.first.inner_text() and "crop match 28.0" in cards.first.inner_text()
    )
    page.locator(".review-panel").screenshot(
        path=str(shot(page, "review-thumbnails").with_name("review-thumbnails-panel.png"))
    )

    # Others on demand: hover shows a candidate while the pointer is there; a number key chooses one.
    cards.nth(2).hover()
    page.wait_for_function("() => document.getElementById('stage').dataset.shown === 'candidate-2'")
    alpha = _painted(page)
    assert (alpha[masks[2]] > 0).all() and not (alpha[masks[0] & ~_dilate(masks[2], ring)] > 0).any()
    shot(page, "review-hover-candidate-3")
    page.mouse.move(5, 5)
    page.wait_for_function("() => document.getElementById('stage').dataset.shown === 'candidate-0'")
    page.keyboard.press("2")
    page.wait_for_function("() => document.getElementById('stage').dataset.shown === 'candidate-1'")
    assert page.locator(".candidate.is-chosen").count() == 1

    # Accept: a toast with Undo that covers neither Previous nor Next; the page moves to the next ready item.
    page.keyboard.press("a")
    toast = page.locator(".toast-ok", has_text="Accepted")
    toast.wait_for()
    page.locator("#item-text", has_text="the unicorn").wait_for()
    review = Review.objects.get(expression=s["ready"])
    assert review.decision == "accepted" and review.candidate.rank == 1
    for nav in ("#prev", "#next"):
        assert not _overlaps(toast.bounding_box(), page.locator(nav).bounding_box()), nav

    # No candidates: Accept is disabled and says why.
    assert page.locator("#accept").is_disabled()
    assert "No candidate" in (page.locator("#accept").get_attribute("title") or "")
    shot(page, "review-undo-toast")

    # Undo from the toast: the review is gone, the history keeps both lines, the item is shown again.
    toast.locator("button", has_text="Undo").click()
    page.locator("#item-text", has_text="the astronaut").wait_for()
    page.locator("#item-review", has_text="Not reviewed yet").wait_for()
    assert not Review.objects.filter(expression=s["ready"]).exists()
    assert list(Activity.objects.filter(expression=s["ready"]).values_list("verb", flat=True)) == [
        "accepted",
        "undone",
    ]
    page.locator("#history li", has_text="undid accepted").wait_for()
    assert page.locator("#history li").count() == 2

    # Reject with R, then Ctrl+Z takes it back too.
    page.keyboard.press("r")
    page.locator(".toast-ok", has_text="Rejected").wait_for()
    assert Review.objects.get(expression=s["ready"]).decision == "rejected"
    page.locator("#item-text", has_text="the unicorn").wait_for()
    page.keyboard.press("Control+z")
    page.locator("#item-text", has_text="the astronaut").wait_for()
    page.locator("#item-review", has_text="Not reviewed yet").wait_for()
    assert not Review.objects.filter(expression=s["ready"]).exists()

    # Correct with the brush and save: going back shows the saved mask, its decision and its author.
    page.locator("#item-text", has_text="the astronaut").wait_for()
    page.keyboard.press("b")
    box = page.locator("#overlay").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.85, box["y"] + box["height"] * 0.85)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.95, box["y"] + box["height"] * 0.85, steps=5)
    page.mouse.up()
    page.keyboard.press("b")
    page.keyboard.press("s")
    page.locator(".toast-ok", has_text="Correction saved").wait_for()
    saved = Review.objects.get(expression=s["ready"])
    assert saved.decision == "corrected"
    stored = mask_utils.decode(
        {"size": saved.corrected_rle["size"], "counts": saved.corrected_rle["counts"].encode()}
    ).astype(bool)
    page.locator("#item-text", has_text="the unicorn").wait_for()
    page.keyboard.press("p")
    page.locator("#item-text", has_text="the astronaut").wait_for()
    page.wait_for_function("() => document.getElementById('stage').dataset.shown === 'saved'")
    page.locator("#item-review", has_text="Saved: Corrected by alice").wait_for()
    assert "Saved mask · corrected by alice" in page.locator("#stage-label").inner_text()
    assert np.array_equal(_painted_mask(page), stored)
    shot(page, "review-saved-mask")

    # The waiting item comes last and cannot be accepted.
    page.keyboard.press("n")
    page.locator("#item-text", has_text="the unicorn").wait_for()
    page.keyboard.press("n")
    page.locator("#item-text", has_text="the flag, still waiting").wait_for()
    assert page.locator("#accept").is_disabled()
    assert not page.js_errors, json.dumps(page.js_errors)


def test_zoom_pan_and_brush_under_zoom(page, live_server, user, review_setup):
    s = review_setup
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/projects/{s['project'].pk}/review/?expression={s['ready'].pk}")
    page.locator(".candidate-btn canvas.thumb").first.wait_for()
    before = page.locator("#overlay").bounding_box()

    # Wheel zooms at the pointer: the image point under it stays put.
    px, py = before["x"] + before["width"] * 0.3, before["y"] + before["height"] * 0.4
    page.mouse.move(px, py)
    page.mouse.wheel(0, -400)
    page.wait_for_function("() => Number(document.getElementById('stage').dataset.zoom) > 1.5")
    after = page.locator("#overlay").bounding_box()
    assert after["width"] > before["width"] * 1.5
    u = (px - after["x"]) / after["width"]
    v = (py - after["y"]) / after["height"]
    assert abs(u - 0.3) < 0.01 and abs(v - 0.4) < 0.01
    assert page.locator("#zoom-level").inner_text() != "100%"

    # Z zooms in more; Space + drag pans by the drag.
    page.keyboard.press("z")
    zoomed = page.locator("#overlay").bounding_box()
    assert zoomed["width"] > after["width"] * 1.3
    page.keyboard.down(" ")
    page.mouse.move(px, py)
    page.mouse.down()
    page.mouse.move(px + 80, py + 40, steps=4)
    page.mouse.up()
    page.keyboard.up(" ")
    panned = page.locator("#overlay").bounding_box()
    assert abs(panned["x"] - zoomed["x"] - 80) < 1.5 and abs(panned["y"] - zoomed["y"] - 40) < 1.5
    shot(page, "review-zoomed")

    # The brush paints where the pointer is, zoomed: image pixel (95, 85), near the zoom's centre.
    page.keyboard.press("b")
    page.keyboard.press("[")
    tx = panned["x"] + panned["width"] * (95.5 / WIDTH)
    ty = panned["y"] + panned["height"] * (85.5 / HEIGHT)
    page.mouse.click(tx, ty)
    alpha = _painted(page)
    assert alpha[85, 95] > 0 and alpha[85, 200] == 0

    # F fits again.
    page.keyboard.press("b")
    page.keyboard.press("f")
    fitted = page.locator("#overlay").bounding_box()
    assert abs(fitted["width"] - before["width"]) < 1 and abs(fitted["x"] - before["x"]) < 1
    assert not page.js_errors, json.dumps(page.js_errors)


def test_polygon_edit_and_category(page, live_server, user, review_setup):
    """Vertices from the top candidate's mask; moving one changes the mask there only; S stores the
    polygon's mask as RLE, equal to what the page painted. The label chosen on the page is stored."""
    from server.ris.models import Expression, Review

    s = review_setup
    project = s["project"]
    project.categories = ["person", "helmet"]
    project.save()
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/projects/{project.pk}/review/?expression={s['ready'].pk}")
    page.locator(".candidate-btn canvas.thumb").first.wait_for()

    page.select_option("#item-category", "person")
    page.locator("#item-category-status", has_text="Saved").wait_for()
    assert Expression.objects.get(pk=s["ready"].pk).category == "person"

    page.keyboard.press("v")
    page.locator("#refine-status", has_text="vertices").wait_for()
    vertices = page.locator("#poly-layer circle.poly-vertex")
    n = vertices.count()
    assert 8 <= n <= 200, n  # simplified: far fewer than the outline's pixel corners
    # The topmost vertex of the ellipse (about (150, 130)) dragged 25 image pixels up.
    tops = page.evaluate(
        "() => Array.from(document.querySelectorAll('#poly-layer circle')).map((c, i) => [Number(c.getAttribute('cy')), Number(c.getAttribute('cx')), i])"
    )
    cy, cx, index = min(tops)
    assert abs(cx - 150) < 20 and abs(cy - 130) < 3
    box = page.locator("#overlay").bounding_box()
    sx, sy = box["width"] / WIDTH, box["height"] / HEIGHT
    page.mouse.move(box["x"] + cx * sx, box["y"] + cy * sy)
    page.mouse.down()
    page.mouse.move(box["x"] + cx * sx, box["y"] + (cy - 25) * sy, steps=6)
    page.mouse.up()
    shot(page, "review-polygon-edit")
    painted = _painted_mask(page)
    top_mask = s["masks"][0]
    assert painted[int(cy) - 15, int(cx)] and not top_mask[int(cy) - 15, int(cx)]  # grown upwards there
    changed = painted ^ top_mask
    far = _dilate(np.zeros_like(top_mask), 0)
    far[:, :] = True
    far[int(cy) - 30 :, :] = False
    assert not (changed & far).any()
    assert changed[int(cy) + 20 :, :].sum() < 0.02 * top_mask.sum()  # elsewhere within the simplification

    page.keyboard.press("s")
    page.locator(".toast-ok", has_text="Correction saved").wait_for()
    review = Review.objects.get(expression=s["ready"])
    stored = mask_utils.decode(
        {"size": review.corrected_rle["size"], "counts": review.corrected_rle["counts"].encode()}
    ).astype(bool)
    assert np.array_equal(stored, painted)
    assert not page.js_errors, json.dumps(page.js_errors)
