"""Configs as data: nested typed sub-configs, one validation with dotted keys, JSON round trips, schemas."""

from __future__ import annotations

import json

import pytest

from workers.engine.blocks.proposals.config import TAS_AMG_CONFIG, AmgConfig
from workers.engine.core.config import config_hash
from workers.engine.core.errors import ConfigError
from workers.engine.methods.catalogue import pipeline_catalogue, resolve_config
from workers.engine.methods.global_local.config import GlobalLocalConfig
from workers.engine.methods.tas.config import TasConfig


def test_nested_overrides_merge_key_by_key_and_round_trip() -> None:
    config = GlobalLocalConfig().merged({"amg": {"points_per_side": 8}, "features": {"shorter_side": 224}})
    assert config.amg == AmgConfig(points_per_side=8) and config.features.shorter_side == 224
    assert config.features.preprocessing == "reference"  # the rest of the sub-config is kept
    again = GlobalLocalConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and config_hash(again.to_dict()) == config_hash(config.to_dict())


def test_a_sub_config_default_can_differ_from_its_class_defaults() -> None:
    assert TasConfig().amg == TAS_AMG_CONFIG and TasConfig().amg.points_per_side == 8
    assert TasConfig().merged({"amg": {"pred_iou_thresh": 0.5}}).amg.points_per_side == 8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bogus": 1}, "unknown config key 'bogus'"),
        ({"amg": {"bogus": 1}}, "unknown config key 'amg.bogus'"),
        ({"amg": "x"}, "config key 'amg' must be a mapping"),
        ({"amg": {"points_per_side": "eight"}}, "'amg.points_per_side' must be an integer"),
        ({"amg": {"points_per_side": 8.5}}, "'amg.points_per_side' must be an integer"),
        ({"amg": {"points_per_side": 0}}, r"'amg.points_per_side' must be in \[1, 64\]"),
        ({"amg": {"points_per_side": 10000}}, r"'amg.points_per_side' must be in \[1, 64\]"),
        ({"amg": {"pred_iou_thresh": 5}}, r"'amg.pred_iou_thresh' must be in \[0.0, 1.0\]"),
        ({"features": {"preprocessing": "fancy"}}, "'features.preprocessing' must be one of"),
        ({"v": float("nan")}, "'v' must be number or null, got nan"),
        ({"clip_model": "sam_vit_h"}, "'clip_model' must name a clip model"),
    ],
)
def test_every_bad_value_names_its_dotted_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_config("global_local", overrides, "tiny")


def test_integral_floats_are_integers_and_ints_are_floats() -> None:
    config = GlobalLocalConfig().merged({"amg": {"points_per_side": 8.0}, "r": 1})
    assert config.amg.points_per_side == 8 and isinstance(config.amg.points_per_side, int)
    assert config.r == 1.0 and isinstance(config.r, float)


def test_schema_documents_every_key_with_bounds_defaults_and_sub_configs() -> None:
    for name, entry in pipeline_catalogue().items():
        cls = entry.config_class()
        schema = cls.schema()
        assert schema["additionalProperties"] is False and set(schema["properties"]) == set(
            cls.field_names()
        ), name
    schema = GlobalLocalConfig.schema()
    amg = schema["properties"]["amg"]
    assert amg["type"] == "object" and amg["properties"]["points_per_side"]["maximum"] == 64
    assert amg["properties"]["points_per_side"]["default"] == 32
    assert schema["properties"]["clip_model"]["x-model-family"] == "clip"
    assert schema["properties"]["dataset"]["enum"] == ["refcoco", "refcoco+", "refcocog"]
    assert schema["properties"]["v"]["type"] == ["number", "null"]
