"""The JSON API: authentication on every endpoint, error shape, membership, the main flows, the schema."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import OperationalError
from django.urls import reverse
from PIL import Image as PILImage
from rest_framework.test import APIClient
from rest_framework.throttling import ScopedRateThrottle

from server.ris.models import Expression, Image, Review
from server.ris.services import job_claim, job_succeed
from server.ris.services.rle import rle_from_mask
from tests.server.factories import candidate_dicts, expression_make, image_make, job_of, png_file

pytestmark = pytest.mark.django_db

ENDPOINTS = [
    ("get", "/api/projects/"),
    ("post", "/api/projects/"),
    ("get", "/api/projects/1/"),
    ("post", "/api/projects/1/members/"),
    ("get", "/api/projects/1/images/"),
    ("post", "/api/projects/1/images/"),
    ("get", "/api/images/1/"),
    ("get", "/api/images/1/file/"),
    ("get", "/api/images/1/expressions/"),
    ("post", "/api/images/1/expressions/"),
    ("get", "/api/jobs/1/"),
    ("post", "/api/jobs/1/cancel/"),
    ("post", "/api/jobs/1/retry/"),
    ("post", "/api/jobs/retry/"),
    ("get", "/api/jobs/1/candidates/"),
    ("get", "/api/expressions/1/reviews/"),
    ("post", "/api/expressions/1/reviews/"),
    ("get", "/api/pipelines/"),
    ("get", "/api/schema/"),
]


@pytest.fixture
def image(project, user):
    return image_make(project, user)


@pytest.fixture
def answered(image, user):
    expression = expression_make(image, user)
    job = job_of(expression)
    job_claim(job_id=job.pk, worker="w")
    job_succeed(
        job_id=job.pk, candidates=candidate_dicts(image.height, image.width, 3), timings={"predict_s": 2.0}
    )
    return expression


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_every_endpoint_needs_credentials(anon_client, method, url):
    response = getattr(anon_client, method)(url)
    assert response.status_code == 401, (url, response.status_code)
    assert response["WWW-Authenticate"].startswith("Token")
    if url != "/api/schema/":
        assert "credentials" in response.json()["error"]


def test_token_sign_in_and_use(user, anon_client):
    response = anon_client.post(
        "/api/auth/token/", {"username": "alice", "password": "pw-for-tests"}, format="json"
    )
    assert response.status_code == 200
    token = response.json()["token"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/projects/").status_code == 200
    wrong = anon_client.post("/api/auth/token/", {"username": "alice", "password": "nope"}, format="json")
    assert wrong.status_code == 400 and "Unable to log in" in wrong.json()["error"]
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert bad.get("/api/projects/").status_code == 401


def test_session_sign_in_works(user, client):
    client.force_login(user)
    assert client.get("/api/projects/").status_code == 200


def test_schema_builds_for_a_signed_in_user(api_client):
    response = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/images/{image_id}/expressions/" in paths and "/api/jobs/{job_id}/candidates/" in paths


def test_schema_of_this_api_has_no_warnings():
    from drf_spectacular.drainage import GENERATOR_STATS
    from drf_spectacular.generators import SchemaGenerator

    GENERATOR_STATS.reset()
    SchemaGenerator(urlconf="server.ris.api.urls").get_schema(request=None, public=True)
    assert not GENERATOR_STATS._warn_cache and not GENERATOR_STATS._error_cache, (
        GENERATOR_STATS._warn_cache,
        GENERATOR_STATS._error_cache,
    )


def test_projects_create_list_and_members(api_client, other_user):
    response = api_client.post("/api/projects/", {"name": "  Street scenes "}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "Street scenes" and body["members"] == ["alice"]
    assert [p["name"] for p in api_client.get("/api/projects/").json()] == ["Street scenes"]
    added = api_client.post(f"/api/projects/{body['id']}/members/", {"username": "mallory"}, format="json")
    assert added.status_code == 200 and added.json()["members"] == ["alice", "mallory"]
    missing = api_client.post(f"/api/projects/{body['id']}/members/", {"username": "nobody"}, format="json")
    assert missing.status_code == 404 and "nobody" in missing.json()["error"]
    empty = api_client.post("/api/projects/", {"name": ""}, format="json")
    assert empty.status_code == 400 and empty.json()["error"].startswith("name:")


def test_upload_list_and_fetch_an_image(api_client, project):
    url = f"/api/projects/{project.pk}/images/"
    files = [png_file("a.png", 300, 200), SimpleUploadedFile("notes.txt", b"no")]
    response = api_client.post(url, {"files": files}, format="multipart")
    assert response.status_code == 201
    body = response.json()
    assert [i["original_name"] for i in body["images"]] == ["a.png"]
    assert body["images"][0]["duplicate"] is False and body["images"][0]["status"] == "no_expression"
    assert body["rejected"][0]["name"] == "notes.txt" and "not an image" in body["rejected"][0]["error"]

    again = api_client.post(url, {"files": [png_file("copy.png", 300, 200)]}, format="multipart")
    assert again.status_code == 201 and again.json()["images"][0]["duplicate"] is True

    listed = api_client.get(url, {"status": "no_expression"}).json()
    assert [i["id"] for i in listed] == [body["images"][0]["id"]]
    assert api_client.get(url, {"status": "bogus"}).status_code == 400

    image_id = body["images"][0]["id"]
    detail = api_client.get(f"/api/images/{image_id}/").json()
    assert detail["width"] == 300 and detail["file_url"] == f"/api/images/{image_id}/file/"
    scaled = api_client.get(f"/api/images/{image_id}/file/", {"max_side": 60})
    assert scaled.status_code == 200 and scaled["Content-Type"] == "image/jpeg"
    assert PILImage.open(io.BytesIO(b"".join(scaled.streaming_content))).size == (60, 40)
    cached = api_client.get(
        f"/api/images/{image_id}/file/", {"max_side": 60}, HTTP_IF_NONE_MATCH=scaled["ETag"]
    )
    assert cached.status_code == 304
    assert api_client.get(f"/api/images/{image_id}/file/", {"max_side": 2}).status_code == 400


def test_upload_with_nothing_acceptable_is_400_with_reasons(api_client, project):
    url = f"/api/projects/{project.pk}/images/"
    response = api_client.post(
        url, {"files": [SimpleUploadedFile("x.jpg", b"\xff\xd8\xff garbage")]}, format="multipart"
    )
    assert response.status_code == 400
    body = response.json()
    assert "x.jpg" in body["error"] and body["rejected"][0]["name"] == "x.jpg"
    assert api_client.post(url, {}, format="multipart").status_code == 400
    assert Image.objects.count() == 0


def test_expression_job_candidates_review_flow(api_client, image, user):
    url = f"/api/images/{image.pk}/expressions/"
    response = api_client.post(url, {"text": "the green square", "pipeline": "global_local"}, format="json")
    assert response.status_code == 201
    body = response.json()
    job = body["job"]
    assert body["text"] == "the green square" and job["state"] == "queued" and job["queue_position"] == 0
    assert body["review"] is None

    job_claim(job_id=job["id"], worker="w")
    job_succeed(job_id=job["id"], candidates=candidate_dicts(image.height, image.width, 3))
    detail = api_client.get(f"/api/jobs/{job['id']}/").json()
    assert detail["state"] == "succeeded" and detail["progress"] == 1.0 and detail["queue_position"] is None
    candidates = api_client.get(f"/api/jobs/{job['id']}/candidates/").json()
    assert [c["rank"] for c in candidates] == [0, 1, 2]
    assert set(candidates[0]) == {"id", "rank", "rle", "bbox_xyxy", "area", "score", "components", "partial"}
    assert candidates[0]["rle"]["size"] == [image.height, image.width]

    review_url = f"/api/expressions/{body['id']}/reviews/"
    accepted = api_client.post(
        review_url, {"decision": "accepted", "candidate": candidates[1]["id"]}, format="json"
    )
    assert accepted.status_code == 201 and accepted.json()["candidate"] == candidates[1]["id"]
    mask = np.zeros((image.height, image.width), dtype=bool)
    mask[1:5, 1:5] = True
    corrected = api_client.post(
        review_url, {"decision": "corrected", "rle": rle_from_mask(mask)}, format="json"
    )
    assert corrected.status_code == 201 and corrected.json()["rle"]["size"] == [image.height, image.width]
    listed = api_client.get(url).json()
    assert listed[0]["review"]["decision"] == "corrected" and listed[0]["job"]["state"] == "succeeded"
    assert [r["decision"] for r in api_client.get(review_url).json()] == ["accepted", "corrected"]
    assert api_client.get(f"/api/projects/{image.project_id}/images/").json()[0]["status"] == "done"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"text": "   "}, "empty"),
        ({"text": "x" * 10_000}, "the limit is 1,000"),
        ({}, "text: This field is required."),
        ({"text": "cat", "pipeline": "magic"}, "Unknown pipeline"),
        ({"text": "cat", "config": "fast"}, "JSON object"),
    ],
)
def test_bad_expressions_get_a_message(api_client, image, payload, message):
    response = api_client.post(f"/api/images/{image.pk}/expressions/", payload, format="json")
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert Expression.objects.count() == 0


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"decision": "corrected", "rle": {"size": [1, 1], "counts": "1"}}, "but the image is"),
        ({"decision": "corrected", "rle": {"size": [30, 40], "counts": "!!"}}, "malformed"),
        ({"decision": "corrected", "rle": [1, 2]}, "must be an object"),
        ({"decision": "accepted"}, "needs the id of the candidate"),
        ({"decision": "accepted", "candidate": 99999}, "not one of the candidates"),
        ({"decision": "great"}, "decision:"),
    ],
)
def test_bad_reviews_get_a_message(api_client, answered, payload, message):
    response = api_client.post(f"/api/expressions/{answered.pk}/reviews/", payload, format="json")
    assert response.status_code == 400, response.json()
    assert message in response.json()["error"]
    assert Review.objects.count() == 0


def test_cancel_and_retry(api_client, image, user):
    job = job_of(expression_make(image, user))
    cancelled = api_client.post(f"/api/jobs/{job.pk}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    again = api_client.post(f"/api/jobs/{job.pk}/cancel/")
    assert again.status_code == 409 and "only queued or running" in again.json()["error"]
    retried = api_client.post(f"/api/jobs/{job.pk}/retry/")
    assert retried.status_code == 200 and retried.json()["state"] == "queued"


def test_members_of_other_projects_get_404(answered, image, project, other_user):
    intruder = APIClient()
    intruder.force_authenticate(user=other_user)
    job = job_of(answered)
    for url in [
        f"/api/projects/{project.pk}/",
        f"/api/projects/{project.pk}/images/",
        f"/api/images/{image.pk}/",
        f"/api/images/{image.pk}/file/",
        f"/api/images/{image.pk}/expressions/",
        f"/api/jobs/{job.pk}/",
        f"/api/jobs/{job.pk}/candidates/",
        f"/api/expressions/{answered.pk}/reviews/",
    ]:
        response = intruder.get(url)
        assert response.status_code == 404, url
        assert (
            "in your projects" in response.json()["error"]
            or "among your projects" in response.json()["error"]
        )
    assert intruder.post(f"/api/jobs/{job.pk}/cancel/").status_code == 404
    assert (
        intruder.post(f"/api/images/{image.pk}/expressions/", {"text": "x"}, format="json").status_code == 404
    )
    upload = intruder.post(f"/api/projects/{project.pk}/images/", {"files": [png_file()]}, format="multipart")
    assert upload.status_code == 404
    assert intruder.get("/api/projects/").json() == []


def test_expression_creation_is_rate_limited(api_client, image, monkeypatch):
    cache.clear()
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"job_create": "2/minute"})
    url = f"/api/images/{image.pk}/expressions/"
    codes = [api_client.post(url, {"text": f"thing {i}"}, format="json").status_code for i in range(3)]
    assert codes == [201, 201, 429]
    limited = api_client.post(url, {"text": "more"}, format="json")
    assert "throttled" in limited.json()["error"] and "Retry-After" in limited
    assert api_client.get(url).status_code == 200  # reading is never limited
    cache.clear()


def test_pipelines_are_listed_from_the_catalogue(api_client):
    listed = api_client.get("/api/pipelines/").json()
    assert [p["name"] for p in listed] == [
        "ensemble",
        "global_local",
        "grounded_sam3",
        "lgd",
        "refdiff",
        "tas",
    ]
    tas = next(p for p in listed if p["name"] == "tas")
    assert tas["title"] == "TAS" and "EMNLP" in tas["paper"] and "rectifier" in tas["description"]
    assert all(p["needs"] for p in listed)


def test_database_down_gives_503_json(api_client, monkeypatch):
    from server.ris import selectors

    def down(**kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(selectors, "project_list_for_user", down)
    response = api_client.get("/api/projects/")
    assert response.status_code == 503
    assert "database is unavailable" in response.json()["error"]


def test_middleware_answers_503_for_pages_and_api(rf):
    from server.ris.middleware import DatabaseUnavailableMiddleware

    middleware = DatabaseUnavailableMiddleware(lambda request: None)
    page = middleware.process_exception(rf.get("/images/"), OperationalError("down"))
    api = middleware.process_exception(rf.get("/api/jobs/1/"), OperationalError("down"))
    assert page.status_code == 503 and b"unavailable" in page.content and page["Content-Type"] == "text/html"
    assert api.status_code == 503 and api["Content-Type"] == "application/json"
    assert middleware.process_exception(rf.get("/"), ValueError("other")) is None


def test_url_names_resolve():
    assert reverse("ris-api:job-candidates", kwargs={"job_id": 3}) == "/api/jobs/3/candidates/"
