"""The pipeline catalogue: one package plus one catalogue entry make a new pipeline, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.engine.ranking_fixtures import image_input
from workers.engine.core.errors import ConfigError, UnknownPipelineError
from workers.engine.core.settings import EngineSettings
from workers.engine.data.synthetic import COLOURS
from workers.engine.methods.catalogue import (
    pipeline_catalogue,
    pipeline_entry,
    pipeline_names,
    resolve_config,
)
from workers.engine.runtime import Engine

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "colour_oracle" / "catalogue.json"


@pytest.fixture
def with_plugin(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RIS_PIPELINE_CATALOGUES", str(PLUGIN))
    return PLUGIN


def test_builtin_pipelines_and_their_descriptions() -> None:
    assert pipeline_names() == ["ensemble", "global_local", "grounded_sam3", "lgd", "refdiff", "tas"]
    for name, entry in pipeline_catalogue().items():
        assert entry.title and entry.description and entry.paper, name
        assert entry.config_class().__name__.endswith("Config")


def test_a_new_pipeline_is_one_package_and_one_catalogue_entry(with_plugin: Path, tmp_path: Path) -> None:
    """tests/plugins/colour_oracle is a package the engine never names; its catalogue entry makes it a pipeline
    that the real engine builds, configures, and runs."""
    assert {"oracle", "oracle_b"} <= set(pipeline_names())
    assert resolve_config("oracle", {"tolerance": 10}).to_dict() == {"tolerance": 10}
    with pytest.raises(ConfigError, match="'tolerance' must be in"):
        resolve_config("oracle", {"tolerance": 999})
    rgb = np.full((40, 60, 3), 128, dtype=np.uint8)
    rgb[5:20, 10:30] = COLOURS["red"]
    engine = Engine(
        EngineSettings(model_dir=tmp_path / "models", cache_dir=None, device="cpu", profile="tiny")
    )
    prediction = engine.predict(image_input(rgb), ["the red one", "nothing here"], pipeline="oracle")
    red, nothing = prediction.candidates
    assert nothing == [] and len(red) == 1 and red[0].bbox_xyxy == (10.0, 5.0, 30.0, 20.0)
    assert prediction.config == {"tolerance": 60} and engine.pipeline("oracle").name == "oracle"


def test_catalogue_errors_name_the_file_and_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(
        UnknownPipelineError, match="known pipelines are: ensemble, global_local, grounded_sam3, lgd"
    ):
        pipeline_entry("nope")
    clash = tmp_path / "clash.json"
    clash.write_text(
        json.dumps({"pipelines": {"tas": json.loads(PLUGIN.read_text())["pipelines"]["oracle"]}})
    )
    monkeypatch.setenv("RIS_PIPELINE_CATALOGUES", str(clash))
    with pytest.raises(ConfigError, match="pipeline 'tas' of .*clash.json is already in"):
        pipeline_catalogue()
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"pipelines": {"x": {"title": "X", "description": "d", "config": "a:B"}}}))
    monkeypatch.setenv("RIS_PIPELINE_CATALOGUES", str(broken))
    with pytest.raises(ConfigError, match="entry 'x' lacks pipeline"):
        pipeline_catalogue()
    wrong = tmp_path / "wrong.json"
    entry = {
        "title": "X",
        "description": "d",
        "pipeline": "a.b:C",
        "config": "workers.engine.core.errors:ConfigError",
    }
    wrong.write_text(json.dumps({"pipelines": {"x": entry}}))
    monkeypatch.setenv("RIS_PIPELINE_CATALOGUES", str(wrong))
    with pytest.raises(ConfigError, match="is not a Config class"):
        resolve_config("x")


def test_profiles_swap_models_for_their_stand_ins_and_apply_overrides() -> None:
    tiny, paper = resolve_config("refdiff", None, "tiny"), resolve_config("refdiff", None, "paper")
    assert (paper.diffusion_model, paper.clip_model, paper.proposal_source) == (
        "sd_1_5",
        "clip_vit_b_16",
        "sam_vit_h",
    )
    assert (tiny.diffusion_model, tiny.clip_model, tiny.proposal_source) == (
        "sd_tiny",
        "clip_tiny",
        "mobile_sam",
    )
    assert (tiny.noising.image_size, paper.noising.image_size) == (256, 1024)
    assert resolve_config("lgd", {"mllm_model": "smolvlm_256m"}, "paper").mllm_model == "smolvlm_256m"
    with pytest.raises(ConfigError, match="unknown model profile 'huge'"):
        resolve_config("tas", None, "huge")
