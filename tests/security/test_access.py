"""Who may reach what: every URL of the URLConf is walked, so a page or endpoint added later is covered too.

- Without credentials, every URL but the few public ones (login, password reset, the health probe, the
  token endpoint) redirects to the login page or answers 401/403, for GET and for POST.
- A signed-in user who is not a member of a project reads nothing of it by id: every URL with an object
  id in its path answers 404 for another project's project, image, file, expression, job, candidates,
  reviews, exports and refine requests, for GET and POST.
- CSRF: a session-authenticated POST without the CSRF token is refused (403) on every URL; the same POST
  with the token passes the check.

A URL whose path has an id this test does not know fails the test with a message saying what to add.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.conf import settings
from django.contrib import admin
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from server.ris.services import job_claim, job_succeed, review_create
from tests.server.factories import candidate_dicts, expression_make, image_make, job_of

pytestmark = pytest.mark.django_db

# URL names anyone may open (namespaced as Django reverses them).
PUBLIC = {
    "healthz",
    "login",
    "logout",
    "password_reset",
    "password_reset_done",
    "password_reset_confirm",
    "password_reset_complete",
    "ris-api:auth-token",
}
# Path parameters that are not project data (benchmark runs are shared by every signed-in user).
NOT_PROJECT_DATA = {"run_id"}
DENIED = {401, 403}


@dataclass(frozen=True)
class Route:
    name: str
    template: str  # "/api/jobs/<int:job_id>/"
    params: tuple[str, ...]

    def url(self, values: dict[str, int | str]) -> str:
        def fill(match: re.Match) -> str:
            return str(values[match.group(2)])

        return re.sub(r"<(?:(\w+):)?(\w+)>", fill, self.template)


def _walk(patterns, prefix: str = "", namespace: str = "") -> Iterator[Route]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            if entry.namespace == "admin":
                continue  # the admin site is checked through its registry below
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern), inner)
        elif isinstance(entry, URLPattern):
            template = "/" + prefix + str(entry.pattern)
            if "(?P<" in template or template.startswith("/^"):
                raise AssertionError(f"{template}: a regex route; teach this test to fill it")
            params = tuple(re.findall(r"<(?:\w+:)?(\w+)>", template))
            yield Route(f"{namespace}{entry.name}", template, params)


ROUTES = list(_walk(get_resolver().url_patterns))
PRIVATE = [route for route in ROUTES if route.name not in PUBLIC and not route.template.startswith("/static")]


def test_the_walk_found_the_known_urls() -> None:
    names = {route.name for route in ROUTES}
    assert {"ris-api:job-detail", "web:review", "web:export-coco", "benchmarks:run-list", "healthz"} <= names
    assert len(PRIVATE) >= 30


def _is_login_redirect(response) -> bool:
    return response.status_code == 302 and response["Location"].startswith(settings.LOGIN_URL)


@pytest.mark.parametrize("route", PRIVATE, ids=lambda route: route.template)
def test_private_urls_need_credentials(client: Client, route: Route) -> None:
    url = route.url({name: 1 for name in route.params})
    answers = {method: getattr(client, method)(url) for method in ("get", "post")}
    for method, response in answers.items():
        assert response.status_code != 200 and response.status_code < 500, (method, url, response.status_code)
        assert response.status_code in DENIED | {405} or _is_login_redirect(response), (
            method,
            url,
            response.status_code,
        )
    assert any(r.status_code in DENIED or _is_login_redirect(r) for r in answers.values()), url


def test_admin_pages_need_a_staff_sign_in(client: Client, user) -> None:
    pages = ["/admin/"] + [
        f"/admin/{model._meta.app_label}/{model._meta.model_name}/" for model in admin.site._registry
    ]
    assert len(pages) > 3
    for page in pages:
        response = client.get(page)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), page
    client.force_login(user)  # signed in, but not staff
    for page in pages:
        response = client.get(page)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), page


@pytest.fixture
def alice_objects(project, user) -> dict[str, int | str]:
    """Ids of one object of each kind in alice's project (a reviewed job, a refine request)."""
    from server.web.services.refine import refine_request_create

    image = image_make(project, user)
    expression = expression_make(image, user)
    job = job_of(expression)
    job_claim(job_id=job.pk, worker="w")
    job_succeed(job_id=job.pk, candidates=candidate_dicts(image.height, image.width, 2))
    review = review_create(
        expression=expression, decision="accepted", reviewer=user, candidate_id=job.candidates.first().pk
    )
    refine = refine_request_create(image=image, requested_by=user, points_xy=[[5.0, 5.0]], labels=[1])
    return {
        "project_id": project.pk,
        "image_id": image.pk,
        "expression_id": expression.pk,
        "job_id": job.pk,
        "request_id": refine.pk,
        "review_id": review.pk,
        "fmt": "coco-polygons",  # an export format (not an id: any project's exports are refused alike)
    }


def test_other_projects_objects_are_not_found_by_id(alice_objects, other_user) -> None:
    intruder = Client()
    intruder.force_login(other_user)
    checked = 0
    for route in PRIVATE:
        if not route.params or set(route.params) & NOT_PROJECT_DATA:
            continue
        missing = set(route.params) - set(alice_objects)
        assert not missing, f"{route.template}: add an object for {missing} to alice_objects"
        url = route.url(alice_objects)
        for method in ("get", "post"):
            response = getattr(intruder, method)(
                url, content_type="application/json", data={} if method == "post" else None
            )
            assert response.status_code in (404, 403, 405), (
                method,
                url,
                response.status_code,
                response.content[:200],
            )
            assert alice_objects["project_id"] is not None
            if response.status_code != 405:
                checked += 1
    assert checked >= 20


def test_refine_of_another_projects_image_is_not_found(alice_objects, other_user) -> None:
    intruder = Client()
    intruder.force_login(other_user)
    response = intruder.post(
        "/web/refine/",
        {"image": alice_objects["image_id"], "points_xy": [[5, 5]], "labels": [1]},
        content_type="application/json",
    )
    assert response.status_code == 404


def test_members_read_what_intruders_cannot(alice_objects, user) -> None:
    """The 404s above are about membership: the owner gets the same URLs."""
    member = Client()
    member.force_login(user)
    for url in (
        f"/api/images/{alice_objects['image_id']}/file/",
        f"/api/jobs/{alice_objects['job_id']}/candidates/",
        f"/api/expressions/{alice_objects['expression_id']}/reviews/",
        f"/web/projects/{alice_objects['project_id']}/export/coco.json",
        f"/web/refine/{alice_objects['request_id']}/",
    ):
        assert member.get(url).status_code == 200, url


def test_session_posts_need_the_csrf_token(alice_objects, user) -> None:
    """Without the token every POST is refused with 403; the same POST with it gets past the check."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    browser.get("/")  # the page sets the CSRF cookie its scripts send back
    token = browser.cookies["csrftoken"].value
    refused = 0
    for route in PRIVATE:
        url = route.url({name: alice_objects.get(name, 1) for name in route.params})
        kind = "application/json"
        without = browser.post(url, data={}, content_type=kind)
        if without.status_code == 415:  # a multipart-only view parses the body to look for the token
            kind = "multipart/form-data; boundary=BoUnDaRy"
            without = browser.post(url, data="--BoUnDaRy--\r\n", content_type=kind)
        assert without.status_code == 403, (url, without.status_code)
        with_token = browser.post(url, data={}, content_type="application/json", HTTP_X_CSRFTOKEN=token)
        assert with_token.status_code != 403, (url, with_token.content[:200])
        refused += 1
    assert refused == len(PRIVATE)

    form = Client(enforce_csrf_checks=True)
    assert form.post(settings.LOGIN_URL, {"username": "alice", "password": "x"}).status_code == 403
    created = browser.post(
        "/api/projects/", {"name": "With token"}, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert created.status_code == 201, created.content


def test_token_clients_are_not_asked_for_csrf(user, project) -> None:
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=user)
    client = Client(enforce_csrf_checks=True)
    response = client.post(
        "/api/projects/",
        {"name": "By token"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {token.key}",
    )
    assert response.status_code == 201
