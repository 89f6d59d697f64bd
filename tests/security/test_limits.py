"""Limits that keep one client from exhausting the service: upload sizes, request sizes, and the rate of job
creation on every endpoint that creates jobs. Each refusal is a 4xx with a message, and nothing stored
before is touched."""

from __future__ import annotations

import json

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.throttling import ScopedRateThrottle

from server.ris.models import Expression, Image, SegmentationJob
from tests.server.factories import expression_make, image_make, job_of, png_file

pytestmark = pytest.mark.django_db


@pytest.fixture
def image(project, user):
    return image_make(project, user)


@pytest.fixture
def tight_rate(monkeypatch):
    """Job creation limited to 2 a minute per user for this test (the cache holds the counts)."""
    cache.clear()
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"job_create": "2/minute"})
    yield
    cache.clear()


def test_file_over_the_upload_limit_is_refused_and_nothing_changes(api_client, project, image, settings):
    settings.RIS_MAX_UPLOAD_BYTES = 4000
    big = SimpleUploadedFile("big.png", png_file(width=400, height=400, color=None).read() + b"\0" * 5000)
    response = api_client.post(f"/api/projects/{project.pk}/images/", {"files": [big]}, format="multipart")
    assert response.status_code == 400
    body = response.json()
    assert "big.png" in body["error"] and "upload limit is 4,000 bytes" in body["error"]
    assert list(Image.objects.values_list("pk", flat=True)) == [image.pk]


def test_too_many_files_in_one_request_is_a_400(api_client, project, image, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    files = [png_file(f"{i}.png", color=(i, i, i)) for i in range(5)]
    response = api_client.post(f"/api/projects/{project.pk}/images/", {"files": files}, format="multipart")
    assert response.status_code == 400, response.content
    assert response.json()["error"]
    assert Image.objects.count() == 1


def test_request_body_over_the_memory_limit_is_a_400(api_client, image, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    payload = json.dumps({"text": "the cat", "config": {"padding": "x" * 20_000}})
    response = api_client.post(
        f"/api/images/{image.pk}/expressions/", payload, content_type="application/json"
    )
    assert response.status_code in (400, 413), response.content
    assert response.json()["error"]
    assert Expression.objects.count() == 0


def test_expression_creation_is_rate_limited_per_user(api_client, image, other_user, tight_rate):
    url = f"/api/images/{image.pk}/expressions/"
    codes = [api_client.post(url, {"text": f"thing {i}"}, format="json").status_code for i in range(3)]
    assert codes == [201, 201, 429]
    limited = api_client.post(url, {"text": "more"}, format="json")
    assert limited.status_code == 429 and int(limited["Retry-After"]) > 0
    assert "throttled" in limited.json()["error"]
    assert SegmentationJob.objects.count() == 2


def test_retry_is_rate_limited(api_client, image, user, tight_rate):
    jobs = [job_of(expression_make(image, user, f"thing {i}")) for i in range(3)]
    for job in jobs:
        assert api_client.post(f"/api/jobs/{job.pk}/cancel/").status_code == 200
    codes = [api_client.post(f"/api/jobs/{job.pk}/retry/").status_code for job in jobs]
    assert codes == [200, 200, 429]


def test_bulk_expressions_are_rate_limited(api_client, project, image, tight_rate):
    rows = f"image,text\n{image.original_name},the cat\n".encode()
    codes = []
    for i in range(3):
        upload = SimpleUploadedFile(f"rows{i}.csv", rows, content_type="text/csv")
        codes.append(
            api_client.post(
                f"/web/projects/{project.pk}/expressions/bulk/", {"file": upload}, format="multipart"
            ).status_code
        )
    assert codes == [201, 201, 429]


def test_refine_requests_are_rate_limited_per_user(api_client, image, monkeypatch):
    """Click-to-refine queues GPU work, so it has a rate limit of its own (scope ``refine``)."""
    cache.clear()
    monkeypatch.setattr(
        ScopedRateThrottle, "THROTTLE_RATES", {"job_create": "600/minute", "refine": "2/minute"}
    )
    body = {"image": image.pk, "points_xy": [[5, 5]], "labels": [1]}
    codes = [api_client.post("/web/refine/", body, format="json").status_code for _ in range(3)]
    cache.clear()
    assert codes == [202, 202, 429]
