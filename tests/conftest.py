"""Fixtures shared by the whole suite (pytest-django; settings from pyproject's DJANGO_SETTINGS_MODULE).

- ``media_root`` (autouse): every test stores files under its own temporary MEDIA_ROOT, never in var/.
  Tests that start another process (a Celery worker, a server) pass it on as ``RIS_MEDIA_ROOT``.
- ``tiny_model_profile`` (autouse): ``settings.RIS_ENGINE.profile`` is ``tiny``, so nothing tries the model hub.
- ``fast_password_hashing`` (autouse): MD5 password hashing, so creating a user costs microseconds
  instead of the production hasher's second on a small CPU. Never used outside tests.
- ``user``, ``other_user``: two plain users (password ``pw-for-tests``); ``other_user`` is in no project.
- ``project``: a project created by ``user`` (so ``user`` is its member).
- ``api_client``: a DRF ``APIClient`` signed in as ``user``; ``anon_client``: one without credentials.
- ``engine_settings``: a function ``(**changes)`` that points ``settings.RIS_ENGINE`` (the one engine settings
  object of web and workers) at other values for the test, e.g. ``engine_settings(model_dir=store)``.
- ``png_bytes``: a function ``(width=32, height=24, mode="RGB", color=...) -> bytes`` writing a real PNG.

Fixtures that touch the database need the test to use ``db`` (they request it themselves).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

TEST_PASSWORD = "pw-for-tests"


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    settings.MEDIA_ROOT = root
    return root


@pytest.fixture(autouse=True)
def tiny_model_profile(settings) -> None:
    """Tests run with the ``tiny`` profile (no model hub is ever tried); a test that means ``auto`` sets it
    with ``engine_settings(profile="auto")`` and points ``HF_ENDPOINT`` at the local test hub."""
    settings.RIS_ENGINE = settings.RIS_ENGINE.replace(profile="tiny")


@pytest.fixture(autouse=True)
def fast_password_hashing(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def user(db, django_user_model):
    return django_user_model.objects.create_user(username="alice", password=TEST_PASSWORD)


@pytest.fixture
def other_user(db, django_user_model):
    return django_user_model.objects.create_user(username="mallory", password=TEST_PASSWORD)


@pytest.fixture
def project(user):
    from server.ris.services import project_create

    return project_create(name="Test project", created_by=user)


@pytest.fixture
def api_client(user):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user=user)
    return client


@pytest.fixture
def anon_client():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def png_bytes() -> Callable[..., bytes]:
    from PIL import Image

    def make(width: int = 32, height: int = 24, mode: str = "RGB", color: object = None) -> bytes:
        fill = (
            color
            if color is not None
            else (0 if mode in ("1", "L", "I", "I;16", "F", "P") else (200, 30, 30))
        )
        if mode in ("RGBA", "LA") and color is None:
            fill = (200, 30, 30, 128) if mode == "RGBA" else (120, 128)
        buffer = io.BytesIO()
        Image.new(mode, (width, height), fill).save(buffer, format="PNG")
        return buffer.getvalue()

    return make


@pytest.fixture
def engine_settings(settings) -> Callable[..., object]:
    def use(**changes: object) -> object:
        settings.RIS_ENGINE = settings.RIS_ENGINE.replace(**changes)
        return settings.RIS_ENGINE

    return use
