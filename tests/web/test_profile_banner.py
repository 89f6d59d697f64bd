"""Pages say when candidates are ranked by random-weight stand-in models."""

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

BANNER = "random-weight stand-ins"


def test_banner_shown_with_tiny_profile(client: Client, django_user_model, engine_settings) -> None:
    engine_settings(profile="tiny")
    user = django_user_model.objects.create_user(username="ann", password="pw-123456789")
    client.force_login(user)
    assert BANNER in client.get("/").content.decode()


def test_no_banner_with_paper_profile(client: Client, django_user_model, engine_settings) -> None:
    engine_settings(profile="paper")
    user = django_user_model.objects.create_user(username="ann", password="pw-123456789")
    client.force_login(user)
    page = client.get("/")
    assert page.status_code == 200
    assert BANNER not in page.content.decode()
