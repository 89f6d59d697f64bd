"""Token authentication keeps the token's user in the cache for RIS_TOKEN_CACHE_SECONDS (one query less
per API request) and still refuses a wrong key, an inactive user, and, once forgotten, a deleted token."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from server.ris.api.authentication import token_forget

pytestmark = pytest.mark.django_db


@pytest.fixture
def token(user) -> str:
    cache.clear()
    return Token.objects.create(user=user).key


def _get(key: str):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.get("/api/projects/")


def test_second_request_reads_the_token_from_the_cache(token):
    with CaptureQueriesContext(connection) as first:
        assert _get(token).status_code == 200
    with CaptureQueriesContext(connection) as second:
        assert _get(token).status_code == 200
    assert len(second) == len(first) - 1
    assert not any("authtoken_token" in q["sql"] for q in second.captured_queries)


def test_a_wrong_key_is_still_refused(token):
    assert _get(token).status_code == 200
    assert _get("0" * 40).status_code == 401


def test_an_inactive_user_is_refused_at_once_when_read_again(token, user, settings):
    settings.RIS_TOKEN_CACHE_SECONDS = 0
    user.is_active = False
    user.save()
    assert _get(token).status_code == 401


def test_a_forgotten_token_is_read_again(token):
    assert _get(token).status_code == 200
    Token.objects.filter(key=token).delete()
    token_forget(token)
    assert _get(token).status_code == 401
