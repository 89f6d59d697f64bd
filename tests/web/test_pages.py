"""Pages: sign-in required, members only, and the review items endpoint behind the review loop."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.server.factories import image_make


@pytest.fixture
def stranger(other_user):
    client = Client()
    client.force_login(other_user)
    return client


def _pages(project_id: int, image_id: int) -> list[str]:
    return [
        "/",
        f"/projects/{project_id}/",
        f"/projects/{project_id}/upload/",
        f"/projects/{project_id}/review/",
        f"/images/{image_id}/",
        "/shortcuts/",
    ]


def test_pages_need_sign_in(project, user):
    image = image_make(project, user)
    for url in _pages(project.pk, image.pk):
        response = Client().get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/"), url


def test_pages_render_for_members(web_client, project, user):
    image = image_make(project, user, name="garden.png")
    for url in _pages(project.pk, image.pk):
        response = web_client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        assert 'id="shortcut-sheet"' in html, url
        assert "https://" not in html.split("<body", 1)[1].replace("https://github", ""), url
    html = web_client.get(f"/images/{image.pk}/").content.decode()
    assert "garden.png" in html and f"/api/images/{image.pk}/file/?max_side=" in html
    assert "Test project" in web_client.get("/").content.decode()


def test_other_projects_are_not_found(stranger, project, user):
    image = image_make(project, user)
    for url in _pages(project.pk, image.pk)[1:5]:
        assert stranger.get(url).status_code == 404, url
    assert stranger.get(f"/web/projects/{project.pk}/review/items/").status_code == 404


def test_login_page_signs_in(user):
    client = Client()
    page = client.get("/accounts/login/")
    assert page.status_code == 200 and b"Sign in" in page.content
    bad = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert b"did not match" in bad.content
    good = client.post("/accounts/login/", {"username": "alice", "password": "pw-for-tests"})
    assert good.status_code == 302 and good["Location"] == "/"


def test_review_items_in_order_with_job_and_review(web_client, reviewed_project):
    project = reviewed_project["project"]
    items = web_client.get(f"/web/projects/{project.pk}/review/items/").json()["items"]
    first, second = reviewed_project["images"]
    assert [i["image_id"] for i in items] == [first.pk, first.pk, second.pk, second.pk]
    by_expr = {i["expression_id"]: i for i in items}
    accepted = by_expr[reviewed_project["accepted"].pk]
    assert accepted["review"]["decision"] == "accepted" and accepted["review"]["reviewer"] == "alice"
    assert accepted["job"]["state"] == "succeeded"
    assert by_expr[reviewed_project["unreviewed"].pk]["review"] is None
    assert (accepted["width"], accepted["height"]) == (40, 30)


def test_static_assets_are_local(web_client, project):
    html = web_client.get(f"/projects/{project.pk}/review/").content.decode()
    assert "/static/js/review.js" in html and "/static/css/app.css" in html
    assert "cdn" not in html.lower()
