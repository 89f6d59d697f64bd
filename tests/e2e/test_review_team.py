"""Team work in real Chromium (issue 18): images shared among members from the project page, per-user
progress counts, "my images only" on the review page, and the review stage: a second person approves
a decision or sends it back (the item is ready again), with the history on the expression."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TEST_PASSWORD
from tests.e2e.conftest import shot, sign_in
from tests.e2e.test_review_page import review_setup  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser]


def _counts(page, username: str) -> list[str]:
    row = page.locator("#team-rows tr", has=page.locator("th", has_text=username))
    return [c.inner_text() for c in row.locator("td").all()]


def test_assignment_review_stage_and_progress(page, live_server, user, review_setup, django_user_model):  # noqa: F811
    from server.ris.models import Activity, ReviewCheck
    from server.ris.services import project_member_add
    from tests.server.factories import image_make

    s = review_setup
    project = s["project"]
    django_user_model.objects.create_user(username="bob", password=TEST_PASSWORD)
    project_member_add(project=project, username="bob")
    second = image_make(project, user, name="second.png", color=(90, 20, 200), width=64, height=48)

    # Alice shares the images between herself and Bob from the project page.
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    page.fill("#assign-users", "alice, bob")
    page.click("#assign-form button[type=submit]")
    page.locator("#assign-status", has_text="Assigned").wait_for()
    s["image"].refresh_from_db()
    assert s["image"].assignee.username == "alice"
    second.refresh_from_db()
    assert second.assignee.username == "bob"
    assert _counts(page, "alice")[:2] == ["1", "3"] and _counts(page, "bob")[:2] == ["1", "0"]
    bad = page.evaluate(
        "async (id) => { const r = await fetch(`/web/projects/${id}/assign/`, {method: 'POST', headers: {'Content-Type': 'application/json',"
        " 'X-CSRFToken': document.querySelector('meta[name=csrf-token]').content}, body: JSON.stringify({usernames: ['mallory']})});"
        " return [r.status, (await r.json()).error]; }",
        project.pk,
    )
    assert bad[0] == 400 and "not a member" in bad[1]

    # Alice reviews her images only and accepts the top candidate.
    page.goto(f"{live_server.url}/projects/{project.pk}/review/?mine=1")
    page.locator(".candidate-btn").first.wait_for()
    assert page.locator("#mine-toggle").inner_text() == "all images"
    page.keyboard.press("a")
    page.locator(".toast-ok", has_text="Accepted").wait_for()
    assert page.locator("#stage-check").is_hidden()  # nobody checks their own decision

    # Bob, the second person, sends it back with a note.
    page.click("text=Sign out")
    sign_in(page, live_server, "bob")
    page.goto(f"{live_server.url}/projects/{project.pk}/review/?expression={s['ready'].pk}")
    page.locator("#stage-check").wait_for()
    assert "alice" in page.locator("#check-who").inner_text()
    shot(page, "review-stage-check")
    page.fill("#check-note", "the helmet belongs in the mask")
    page.click("#check-send-back")
    page.locator("#item-review", has_text="sent back by bob").wait_for()
    page.locator("#history li", has_text="sent back").wait_for()
    check = ReviewCheck.objects.get()
    assert check.verdict == "sent_back" and check.checker.username == "bob"

    # Back to Alice: the item is ready again; she accepts candidate 2; Bob approves.
    page.click("text=Sign out")
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/projects/{project.pk}/review/")
    page.locator("#item-text", has_text="the astronaut").wait_for()
    page.locator("#item-review", has_text="sent back by bob").wait_for()
    page.locator(".candidate-btn").nth(1).wait_for()  # the keys act on drawn candidates, not before
    page.keyboard.press("2")
    page.keyboard.press("a")
    page.locator(".toast-ok", has_text="Accepted").wait_for()
    page.click("text=Sign out")
    sign_in(page, live_server, "bob")
    page.goto(f"{live_server.url}/projects/{project.pk}/review/?expression={s['ready'].pk}")
    page.locator("#stage-check").wait_for()
    page.click("#check-approve")
    page.locator("#item-review", has_text="approved by bob").wait_for()
    verbs = list(Activity.objects.filter(expression=s["ready"]).values_list("verb", flat=True))
    assert verbs == ["accepted", "sent_back", "accepted", "approved"]
    page.locator("#history li").nth(3).wait_for()
    shot(page, "review-stage-approved")

    # Per-user progress on the project page.
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    assert _counts(page, "alice") == ["1", "3", "1", "1", "0", "0"]
    assert _counts(page, "bob")[-1] == "2"
    shot(page, "project-team")
    assert not page.js_errors, json.dumps(page.js_errors)
