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


def _store_with(root, names: list[str]):
    """A store whose manifest records ``names``, each with one small file (what ``model_on_disk`` checks)."""
    from workers.engine.store.catalogue import catalogue_entry
    from workers.engine.store.manifest import ModelEntry, ModelStore

    store = ModelStore(root)
    for name in names:
        cat = catalogue_entry(name)
        (store.path(name)).mkdir(parents=True)
        (store.path(name) / "weights.bin").write_bytes(b"x")
        store.record(
            ModelEntry(name, cat.family, cat.format, cat.profile, cat.arch, {"weights.bin": "0" * 64})
        )
    return store


def test_auto_without_fetched_models_names_the_fix_in_one_line(
    client: Client, django_user_model, engine_settings, tmp_path
) -> None:
    engine_settings(profile="auto", device="cpu", model_dir=tmp_path / "store")
    _store_with(tmp_path / "store", ["mobile_sam", "clip_vit_b_16"])  # only global_local's cpu models
    user = django_user_model.objects.create_user(username="ann", password="pw-123456789")
    client.force_login(user)
    page = client.get("/").content.decode()
    assert page.count('class="model-notice"') == 1
    notice = page.split('class="model-notice" role="note">', 1)[1].split("</p>", 1)[0]
    assert "random-weight stand-ins" in notice and "python manage.py models fetch --profile auto" in notice
    # global_local has its real models; the ensemble (global_local + tas by default) falls back with tas
    assert notice.startswith("ensemble, lgd, refdiff, tas rank")
    assert "\n" not in notice


def test_auto_with_the_cpu_set_shows_no_banner_and_ranks_with_it(
    client: Client, django_user_model, engine_settings, tmp_path
) -> None:
    from django.conf import settings

    from workers.engine.store.profiles import pipeline_profile

    cpu_set = ["mobile_sam", "clip_vit_b_16", "blip_base", "smolvlm_256m", "sd_1_5"]
    engine_settings(profile="auto", device="cpu", model_dir=tmp_path / "store")
    _store_with(tmp_path / "store", cpu_set)
    user = django_user_model.objects.create_user(username="ann", password="pw-123456789")
    client.force_login(user)
    page = client.get("/").content.decode()
    assert BANNER not in page and "model-notice" not in page
    resolved = pipeline_profile(settings.RIS_ENGINE, "tas")
    assert (resolved.target, resolved.profile) == ("cpu", "cpu")
