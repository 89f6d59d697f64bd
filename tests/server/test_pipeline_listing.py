"""The pipeline listing (``/api/pipelines/`` and the pipelines page): what each needs and whether its models are
in the store, under the engine's profile, without the web process importing torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.engine.store.manifest import ModelEntry, ModelStore

pytestmark = pytest.mark.django_db


def _record_fake(store: ModelStore, name: str) -> None:
    """Record ``name`` with one small file on disk (presence is manifest + files; checksums are the worker's)."""
    folder = store.path(name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights.bin").write_bytes(b"x")
    from workers.engine.store.catalogue import catalogue_entry
    from workers.engine.store.checksum import hash_tree

    cat = catalogue_entry(name)
    store.record(
        ModelEntry(name, cat.family, cat.format, cat.profile, {}, hash_tree(folder), dict(cat.source))
    )


def test_the_api_says_which_models_each_pipeline_needs_and_has(
    api_client, engine_settings, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "models")
    for name in ("sam3_tiny", "qwen_vl_tiny"):
        _record_fake(store, name)
    engine_settings(model_dir=tmp_path / "models", profile="tiny")
    listed = {p["name"]: p for p in api_client.get("/api/pipelines/").json()}

    grounded = listed["grounded_sam3"]
    assert "SAM 3" in grounded["needs"] and "GPU" in grounded["needs"]
    models = {m["key"]: m for m in grounded["models"]}
    assert models["sam3_model"] == {"key": "sam3_model", "name": "sam3_tiny", "present": True}
    assert models["mllm_model"]["name"] == "qwen_vl_tiny" and models["mllm_model"]["present"]
    assert models["fallback_source"] == {"key": "fallback_source", "name": "mobile_sam", "present": False}
    assert grounded["models_present"] is False

    ensemble = listed["ensemble"]
    keys = {m["key"] for m in ensemble["models"]}
    assert {"members.global_local.clip_model", "members.tas.captioner_model"} <= keys
    assert ensemble["models_present"] is False

    _record_fake(store, "mobile_sam")
    listed = {p["name"]: p for p in api_client.get("/api/pipelines/").json()}
    assert listed["grounded_sam3"]["models_present"] is True


def test_a_model_whose_file_is_gone_is_missing(api_client, engine_settings, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    _record_fake(store, "sam3_tiny")
    (store.path("sam3_tiny") / "weights.bin").unlink()
    engine_settings(model_dir=tmp_path / "models", profile="tiny")
    grounded = next(p for p in api_client.get("/api/pipelines/").json() if p["name"] == "grounded_sam3")
    assert {m["name"]: m["present"] for m in grounded["models"]}["sam3_tiny"] is False


def test_the_pipelines_page_lists_needs_and_missing_models(
    client, user, engine_settings, tmp_path: Path
) -> None:
    engine_settings(model_dir=tmp_path / "empty", profile="paper")
    client.force_login(user)
    page = client.get("/pipelines/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Grounded SAM 3" in html and "Ensemble" in html and "models missing" in html
    assert "<code>sam3</code> <strong>missing</strong>" in html and "qwen2_5_vl_7b" in html
    assert json.dumps("Pipelines")[1:-1] in html
