"""The Engine entry point: settings from the environment, configs, predict / prepare / refine, singleton."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.engine.ranking_fixtures import TINY_SAM_AMG, image_input, random_rgb, single_torch_thread
from workers.engine.blocks.masks import decode_rle_one, encode_rle_one
from workers.engine.core.errors import BadInputError, ConfigError, ModelStoreError, UnknownPipelineError
from workers.engine.core.settings import PROJECT_ROOT, EngineSettings
from workers.engine.runtime import Engine, get_engine, reset_engine

_ = single_torch_thread  # imported for pytest

TINY = {"proposal_source": "sam_tiny", "amg": TINY_SAM_AMG}


@pytest.fixture
def engine(model_store: Any, model_hub: Any, tmp_path: Path, single_torch_thread: None) -> Engine:
    settings = EngineSettings(
        model_dir=model_store.root, cache_dir=tmp_path / "cache", device="cpu", profile="tiny"
    )
    return Engine(settings, hub=model_hub)


def image_calls(engine: Engine) -> tuple[int, int]:
    return engine.meter.calls("sam_tiny"), engine.meter.calls("clip_tiny:image")


# -- settings --------------------------------------------------------------------------------------------


def test_settings_from_env(tmp_path: Path) -> None:
    env = {
        "RIS_MODEL_DIR": str(tmp_path / "models"),
        "RIS_CACHE_DIR": "none",
        "RIS_DEVICE": "cpu",
        "RIS_MODEL_PROFILE": "paper",
        "RIS_MODEL_MEMORY_MB": "2048",
        "RIS_CACHE_MEMORY_MB": "64",
    }
    settings = EngineSettings.from_env(env)
    assert settings == EngineSettings(
        model_dir=tmp_path / "models",
        cache_dir=None,
        device="cpu",
        profile="paper",
        model_memory_budget_mb=2048,
        cache_memory_mb=64,
    )


def test_settings_defaults_live_under_var(tmp_path: Path) -> None:
    settings = EngineSettings.from_env({"RIS_VAR_DIR": str(tmp_path)})
    assert settings.model_dir == tmp_path / "models" and settings.cache_dir == tmp_path / "cache"
    assert settings.profile == "auto" and settings.device == "auto"
    relative = EngineSettings.from_env({"RIS_MODEL_DIR": "some/models"})
    assert relative.model_dir == PROJECT_ROOT / "some" / "models"


def test_bad_settings_are_refused_in_words() -> None:
    with pytest.raises(ConfigError, match="RIS_MODEL_MEMORY_MB"):
        EngineSettings.from_env({"RIS_MODEL_MEMORY_MB": "lots"})
    with pytest.raises(ConfigError, match="profile 'huge'"):
        EngineSettings.from_env({"RIS_MODEL_PROFILE": "huge"})


# -- configs ---------------------------------------------------------------------------------------------


def test_resolve_config_is_full_and_json_ready(engine: Engine) -> None:
    assert "global_local" in engine.pipelines()
    config = engine.resolve_config("global_local")
    assert config["clip_model"] == "clip_tiny" and config["proposal_source"] == "mobile_sam"
    assert json.loads(json.dumps(config)) == config
    assert engine.resolve_config("global_local", config) == config  # a recorded config re-resolves to itself
    changed = engine.resolve_config("global_local", {"dataset": "refcocog", "amg": {"points_per_side": 4}})
    assert changed["dataset"] == "refcocog" and changed["amg"]["points_per_side"] == 4
    with pytest.raises(ConfigError, match="'bogus'"):
        engine.resolve_config("global_local", {"bogus": 1})
    with pytest.raises(UnknownPipelineError, match="nope"):
        engine.resolve_config("nope")


# -- predict / prepare -----------------------------------------------------------------------------------


def test_predict_top_k_and_second_expression_is_image_free(engine: Engine) -> None:
    image = image_input(random_rgb(seed=21))
    prediction = engine.predict(image, ["the left cup"], pipeline="global_local", config=TINY, top_k=3)
    assert prediction.pipeline == "global_local" and prediction.profile == "tiny"
    assert prediction.config == engine.resolve_config("global_local", TINY)  # what ran is returned with it
    results = prediction.candidates
    assert len(results) == 1 and 1 <= len(results[0]) <= 3
    assert [c.rank for c in results[0]] == list(range(len(results[0])))
    after_first = image_calls(engine)
    assert after_first[0] == 1
    more = engine.predict(
        image, ["a plate", "a fork"], pipeline="global_local", config=TINY, top_k=2
    ).candidates
    assert [len(r) for r in more] == [2, 2]
    assert image_calls(engine) == after_first
    snapshot = engine.meter.snapshot()
    assert snapshot["stages"]["predict:global_local"]["calls"] == 2
    assert snapshot["models"]["clip_tiny:text"]["calls"] >= 2


def test_prepare_makes_predict_image_free(engine: Engine) -> None:
    image = image_input(random_rgb(seed=22))
    engine.prepare(image, pipeline="global_local", config=TINY)
    prepared = image_calls(engine)
    assert prepared[0] == 1 and prepared[1] >= 2
    engine.predict(image, ["anything"], pipeline="global_local", config=TINY)
    assert image_calls(engine) == prepared


def test_pipelines_are_built_once_per_config(engine: Engine) -> None:
    assert engine.pipeline("global_local", TINY) is engine.pipeline("global_local", dict(TINY))
    assert engine.pipeline("global_local", TINY) is not engine.pipeline("global_local", {**TINY, "r": 0.1})


def test_predict_refuses_bad_input(engine: Engine) -> None:
    image = image_input(random_rgb(seed=23))
    with pytest.raises(BadInputError, match="list of strings"):
        engine.predict(image, "a dog", pipeline="global_local", config=TINY)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="ImageInput"):
        engine.predict(image.rgb, ["a dog"], pipeline="global_local", config=TINY)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="top_k"):
        engine.predict(image, ["a dog"], pipeline="global_local", config=TINY, top_k=0)
    with pytest.raises(BadInputError, match="empty"):
        engine.predict(image, [""], pipeline="global_local", config=TINY)
    assert engine.predict(image, [], pipeline="global_local", config=TINY).candidates == []


# -- refine ----------------------------------------------------------------------------------------------


def test_refine_embeds_the_image_once(engine: Engine) -> None:
    rgb = random_rgb(40, 56, seed=24)
    image = image_input(rgb)
    first = engine.refine(image, points_xy=[(20.0, 10.0)], labels=[1], sam_model="sam_tiny")
    assert first["size"] == [40, 56] and isinstance(first["counts"], str)
    assert engine.meter.calls("sam_tiny:encoder") == 1
    previous = np.zeros((40, 56), dtype=bool)
    previous[5:20, 5:30] = True
    second = engine.refine(
        image,
        points_xy=[(20.0, 10.0), (50.0, 30.0)],
        labels=[1, 0],
        box_xyxy=(2.0, 2.0, 40.0, 30.0),
        mask_rle=encode_rle_one(previous),
        sam_model="sam_tiny",
    )
    assert decode_rle_one(second).shape == (40, 56)
    assert engine.meter.calls("sam_tiny:encoder") == 1
    assert engine.meter.calls("sam_tiny:decoder") == 2


def test_refine_refuses_a_mask_of_another_size(engine: Engine) -> None:
    image = image_input(random_rgb(40, 56, seed=25))
    other = encode_rle_one(np.ones((10, 10), dtype=bool))
    with pytest.raises(BadInputError, match="10 x 10"):
        engine.refine(image, points_xy=[(1.0, 1.0)], labels=[1], mask_rle=other, sam_model="sam_tiny")


def test_refine_model_follows_the_profile(tmp_path: Path) -> None:
    tiny = Engine(EngineSettings(model_dir=tmp_path, cache_dir=None, device="cpu", profile="tiny"))
    paper = Engine(EngineSettings(model_dir=tmp_path, cache_dir=None, device="cpu", profile="paper"))
    assert tiny.refine_model() == "mobile_sam" and paper.refine_model() == "sam_vit_h"


# -- singleton -------------------------------------------------------------------------------------------


def test_get_engine_is_one_per_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RIS_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("RIS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RIS_DEVICE", "cpu")
    reset_engine()
    try:
        engine = get_engine()
        assert engine is get_engine()
        assert engine.settings.model_dir == tmp_path / "models"
        assert engine.settings.cache_dir == tmp_path / "cache"
    finally:
        reset_engine()


def test_a_missing_model_fails_before_any_image_work(engine: Engine) -> None:
    image = image_input(random_rgb(seed=31))
    before = image_calls(engine)
    with pytest.raises(
        ModelStoreError, match=r"config key 'clip_model'.*clip_vit_b_16.*models fetch clip_vit_b_16"
    ):
        engine.predict(
            image, ["a cup"], pipeline="global_local", config={**TINY, "clip_model": "clip_vit_b_16"}
        )
    assert image_calls(engine) == before  # no proposals were made for a job that cannot finish
