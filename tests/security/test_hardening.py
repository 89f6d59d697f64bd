"""Issue 16's requests that ended in a 500 or exposed a weak point, each with its own test.

- JSON nested deeper than ``RIS_MAX_JSON_DEPTH``: a 400 naming the limit, on the token endpoint without
  credentials, on a signed-in JSON endpoint, and inside a bulk-expressions file;
- a non-ASCII digit ("²") in a numeric query parameter: read as absent, not a 500;
- an archive holding only skipped members (``__MACOSX/``, dot-files): a 400 in words;
- JSON 404/405 everywhere under /api/; password reset off without mail; sign-in lockout per account and
  per address on the token endpoint and the sign-in page; HSTS and CSP in production settings; a bad
  Host header logged in one line.
"""

from __future__ import annotations

import logging

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import clear_url_caches

from server.ris.models import Expression
from tests.conftest import TEST_PASSWORD
from tests.server.factories import image_make
from tests.server.test_upload import jpeg_bytes, zip_bytes

pytestmark = pytest.mark.django_db

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(autouse=True)
def _axes_reset():
    """Each test starts with no counted sign-in failures (axes keeps them in the database)."""
    from axes.models import AccessAttempt

    AccessAttempt.objects.all().delete()


def test_deep_json_on_the_token_endpoint_without_credentials_is_a_400_naming_the_limit(anon_client):
    response = anon_client.post("/api/auth/token/", DEEP, content_type="application/json")
    assert response.status_code == 400
    assert "limit is 32 levels" in response.json()["error"]


def test_deep_json_on_a_signed_in_endpoint_is_a_400(api_client, project, user):
    image = image_make(project, user)
    body = '{"text": "the dog", "config": ' + "{" * 40 + "}" * 40 + "}"
    response = api_client.post(f"/api/images/{image.pk}/expressions/", body, content_type="application/json")
    assert response.status_code == 400
    assert "nested 41 levels deep" in response.json()["error"]
    assert not Expression.objects.exists()


def test_shallow_json_with_brackets_inside_strings_is_accepted(api_client, project, user):
    image = image_make(project, user)
    body = '{"text": "' + "[{" * 200 + '"}'
    response = api_client.post(f"/api/images/{image.pk}/expressions/", body, content_type="application/json")
    assert response.status_code == 201, response.json()


def test_deep_json_inside_a_bulk_file_is_a_400_naming_the_file(api_client, project):
    upload = SimpleUploadedFile("rows.json", DEEP.encode())
    response = api_client.post(
        f"/web/projects/{project.pk}/expressions/bulk/", {"file": upload}, format="multipart"
    )
    assert response.status_code == 400
    assert "rows.json" in response.json()["error"] and "limit is 32 levels" in response.json()["error"]


@pytest.mark.parametrize("value", ["²", "٣", "1²", "99999999999999999999999", "-1", " 7"])
def test_non_ascii_or_odd_digits_on_the_review_page_are_ignored(user, project, value):
    client = Client()
    client.force_login(user)
    response = client.get(f"/projects/{project.pk}/review/", {"expression": value, "image": value})
    assert response.status_code == 200
    assert response.context["start_expression"] == "" and response.context["start_image"] == ""


def test_non_ascii_digit_in_an_api_query_parameter_is_a_400(api_client, project, user):
    image = image_make(project, user)
    response = api_client.get(f"/api/images/{image.pk}/file/", {"max_side": "٣٢"})
    assert response.status_code == 400
    assert "max_side" in response.json()["error"]


def test_an_archive_of_only_skipped_members_is_answered_in_words(api_client, project):
    data = zip_bytes({"__MACOSX/._a.jpg": b"x", ".DS_Store": b"y", "pics/.hidden.jpg": jpeg_bytes()})
    upload = SimpleUploadedFile("mac.zip", data)
    response = api_client.post(f"/api/projects/{project.pk}/images/", {"files": [upload]}, format="multipart")
    assert response.status_code == 400
    error = response.json()["error"]
    assert "mac.zip holds only files that are skipped" in error and "__MACOSX" in error


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", "/api/nowhere/", 404),
        ("get", "/api/projects/abc/", 404),
        ("post", "/api/jobs/1/candidates/", 405),
        ("delete", "/api/projects/", 405),
    ],
)
def test_every_api_error_is_json(api_client, method, path, status):
    response = getattr(api_client, method)(path)
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"]


def test_api_404_without_credentials_is_json_too(anon_client):
    response = anon_client.get("/api/no/such/thing")
    assert response.status_code == 404 and response.json()["error"].startswith("No API endpoint")


def test_password_reset_is_off_without_mail(anon_client):
    assert Client().get("/accounts/password_reset/").status_code == 404
    assert Client().post("/accounts/password_reset/", {"email": "a@b.c"}).status_code == 404


def test_password_reset_is_on_with_mail(settings):
    from importlib import reload

    import server.config.urls as root_urls

    settings.RIS_PASSWORD_RESET = True
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    try:
        reload(root_urls)
        clear_url_caches()
        assert Client().get("/accounts/password_reset/").status_code == 200
    finally:
        settings.RIS_PASSWORD_RESET = False
        reload(root_urls)
        clear_url_caches()


def _token(client, password: str, username: str = "alice", address: str = "10.0.0.1"):
    return client.post(
        "/api/auth/token/", {"username": username, "password": password}, format="json", REMOTE_ADDR=address
    )


def test_token_endpoint_locks_an_account_after_the_limit_even_for_the_right_password(
    settings, anon_client, user
):
    settings.AXES_FAILURE_LIMIT = 5
    for attempt in range(4):
        assert _token(anon_client, "wrong", address=f"10.0.0.{attempt}").status_code == 400
    assert _token(anon_client, "wrong", address="10.0.0.4").status_code == 429  # the limit-th failure
    response = _token(anon_client, TEST_PASSWORD, address="10.9.9.9")
    assert response.status_code == 429
    assert "Too many wrong passwords" in response.json()["error"] and int(response["Retry-After"]) > 0


def test_token_endpoint_locks_an_address_across_accounts(settings, anon_client, user, other_user):
    settings.AXES_FAILURE_LIMIT = 5
    for attempt in range(4):
        assert _token(anon_client, "wrong", username=f"guess{attempt}").status_code == 400
    assert _token(anon_client, "wrong", username="guess4").status_code == 429
    assert _token(anon_client, TEST_PASSWORD, username="mallory").status_code == 429
    assert _token(anon_client, TEST_PASSWORD, username="mallory", address="10.0.0.2").status_code == 200


def test_a_success_below_the_limit_clears_the_account(settings, anon_client, user):
    settings.AXES_FAILURE_LIMIT = 5
    for _ in range(4):
        _token(anon_client, "wrong", address="10.1.1.1")
    assert _token(anon_client, TEST_PASSWORD, address="10.1.1.2").status_code == 200
    for _ in range(4):
        _token(anon_client, "wrong", address="10.1.1.3")
    assert _token(anon_client, TEST_PASSWORD, address="10.1.1.4").status_code == 200


def test_sign_in_page_locks_after_the_limit(settings, user):
    settings.AXES_FAILURE_LIMIT = 5
    client = Client()
    for _ in range(4):
        response = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
        assert response.status_code == 200
    assert client.post("/accounts/login/", {"username": "alice", "password": "wrong"}).status_code == 429
    response = client.post("/accounts/login/", {"username": "alice", "password": TEST_PASSWORD})
    assert response.status_code == 429
    assert b"Too many wrong passwords" in response.content
    assert "_auth_user_id" not in client.session


def test_production_sends_hsts_and_csp_on_secure_requests(settings, user):
    settings.SECURE_HSTS_SECONDS = 31_536_000
    settings.RIS_CSP = settings.RIS_CSP_DEFAULT
    response = Client().get("/accounts/login/", secure=True)
    assert response["Strict-Transport-Security"].startswith("max-age=31536000")
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response["Content-Security-Policy"]


def test_production_settings_default_to_hsts_csp_and_persistent_connections(monkeypatch):
    import subprocess
    import sys

    code = (
        "from django.conf import settings as s; import django; django.setup();"
        "print(s.SECURE_HSTS_SECONDS, bool(s.RIS_CSP), s.DATABASES['default']['CONN_MAX_AGE'],"
        " s.RIS_PASSWORD_RESET)"
    )
    env = {
        "RIS_ENV": "production",
        "DJANGO_SECRET_KEY": "x" * 40,
        "DJANGO_SETTINGS_MODULE": "server.config.settings",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["31536000", "True", "600", "False"]


def test_a_bad_host_header_is_logged_in_one_line(caplog, settings):
    from server.config.logfilters import ExpectedErrorsOneLine

    assert "expected_errors" in settings.LOGGING["handlers"]["console"]["filters"]

    one_line = ExpectedErrorsOneLine()
    with caplog.at_level(logging.WARNING):
        response = Client().get("/healthz", HTTP_HOST="evil.example")
    assert response.status_code == 400
    records = [r for r in caplog.records if r.name.startswith("django.security")]
    assert records, "the refusal is still logged"
    for record in records:
        one_line.filter(record)
        assert record.exc_info is None and "evil.example" in record.getMessage()
        assert "DisallowedHost" in record.getMessage()


@pytest.mark.parametrize("path", ["/api/projects/", "/admin/ris/project/"])
def test_a_nul_in_a_query_parameter_is_a_400(api_client, path):
    response = api_client.get(path, {"q": "a\x00b"})
    assert response.status_code == 400
    assert b"NUL character" in response.content
