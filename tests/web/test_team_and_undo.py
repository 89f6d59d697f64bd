"""Undo of decisions, the review stage and assignment, at the service / endpoint level (issue 18)."""

from __future__ import annotations

import pytest

from server.ris.errors import Conflict, InvalidInput
from server.ris.models import Activity, Review
from server.ris.services import project_member_add, review_create
from server.ris.services.reviews import review_undo
from server.web.selectors import review_items, team_progress
from server.web.services.labels import expression_category_set, project_categories_set
from server.web.services.team import images_assign, review_check


def test_undo_only_latest_and_own(reviewed_project, user, other_user):
    expression = reviewed_project["unreviewed"]
    first = review_create(expression=expression, decision="rejected", reviewer=user)
    second = review_create(expression=expression, decision="rejected", reviewer=user)
    with pytest.raises(Conflict, match="newer one exists"):
        review_undo(review=first, user=user)
    with pytest.raises(Conflict, match="person who made"):
        review_undo(review=second, user=other_user)
    assert review_undo(review=second, user=user) == first
    assert list(Review.objects.filter(expression=expression)) == [first]
    verbs = list(Activity.objects.filter(expression=expression).values_list("verb", "detail"))
    assert verbs == [("rejected", ""), ("rejected", ""), ("undone", "undid rejected")]


def test_undo_endpoint_answers_previous_verdict(web_client, reviewed_project, user):
    expression = reviewed_project["accepted"]
    latest = review_create(expression=expression, decision="rejected", reviewer=user)
    response = web_client.post(f"/web/reviews/{latest.pk}/undo/")
    assert response.status_code == 200
    assert response.json()["review"]["decision"] == "accepted"
    again = web_client.post(f"/web/reviews/{latest.pk}/undo/")
    assert again.status_code == 404


def test_review_stage_rules_and_progress(reviewed_project, user, other_user):
    project = reviewed_project["project"]
    project_member_add(project=project, username=other_user.username)
    accepted = Review.objects.filter(expression=reviewed_project["accepted"]).latest("id")
    with pytest.raises(Conflict, match="second person"):
        review_check(review=accepted, checker=user, verdict="approved")
    with pytest.raises(InvalidInput, match="verdict must be"):
        review_check(review=accepted, checker=other_user, verdict="maybe")
    review_check(review=accepted, checker=other_user, verdict="sent_back", note="too loose")
    items = {i["expression_id"]: i for i in review_items(project=project)}
    item = items[reviewed_project["accepted"].pk]
    assert item["ready"] and item["check"] == {
        "verdict": "sent_back",
        "checker": other_user.username,
        "note": "too loose",
    }
    corrected = Review.objects.filter(expression=reviewed_project["corrected"]).latest("id")
    review_check(review=corrected, checker=other_user, verdict="approved")
    counts = images_assign(project=project, usernames=[user.username, other_user.username])
    assert counts == {user.username: 1, other_user.username: 1}
    assert images_assign(project=project, usernames=[user.username]) == {user.username: 0}  # none unassigned
    with pytest.raises(InvalidInput, match="not a member"):
        images_assign(project=project, usernames=["nobody"])
    rows = {r["username"]: r for r in team_progress(project=project)}
    assert rows[user.username]["decided"] == 3 and rows[user.username]["approved"] == 1
    assert rows[user.username]["sent_back"] == 1 and rows[other_user.username]["checks"] == 2
    mine = review_items(project=project, assignee=other_user)
    assert {i["image_id"] for i in mine} == {reviewed_project["images"][1].pk}


def test_categories_rules(reviewed_project):
    project = reviewed_project["project"]
    assert project_categories_set(project=project, names=" dog, cat ,, ") == ["dog", "cat"]
    with pytest.raises(InvalidInput, match="repeat"):
        project_categories_set(project=project, names=["a", "a"])
    expression = reviewed_project["accepted"]
    assert expression_category_set(expression=expression, category="cat").category == "cat"
    with pytest.raises(InvalidInput, match="not a category"):
        expression_category_set(expression=expression, category="horse")
