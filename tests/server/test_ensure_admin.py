"""``manage.py ensure_admin``: creates the first superuser once, from the environment or with a printed password."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

pytestmark = pytest.mark.django_db


def run() -> str:
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    return out.getvalue()


def test_creates_from_environment_and_is_idempotent(monkeypatch):
    monkeypatch.setenv("RIS_ADMIN_USER", "boss")
    monkeypatch.setenv("RIS_ADMIN_PASSWORD", "a-long-secret-pw")
    monkeypatch.setenv("RIS_ADMIN_EMAIL", "boss@example.org")
    assert "Created the superuser 'boss'" in run()
    user = get_user_model().objects.get(username="boss")
    assert user.is_superuser and user.check_password("a-long-secret-pw") and user.email == "boss@example.org"
    assert "admin made on the first start" in run()  # nothing created twice
    assert get_user_model().objects.filter(is_superuser=True).count() == 1


def test_generated_password_is_printed_once(monkeypatch):
    monkeypatch.delenv("RIS_ADMIN_USER", raising=False)
    monkeypatch.delenv("RIS_ADMIN_PASSWORD", raising=False)
    output = run()
    password = output.split("Its password is: ")[1].split()[0]
    assert get_user_model().objects.get(username="admin").check_password(password)
    assert "changepassword admin" in output


def test_refuses_to_promote_an_existing_plain_user(monkeypatch, django_user_model):
    django_user_model.objects.create_user(username="admin", password="x")
    monkeypatch.delenv("RIS_ADMIN_USER", raising=False)
    with pytest.raises(CommandError, match="exists but is not a superuser"):
        run()
