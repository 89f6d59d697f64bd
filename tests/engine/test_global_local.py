"""Global-Local CLIP: config as data, the registry, ranking on tiny models, caching, real MobileSAM."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.engine.ranking_fixtures import (
    TINY_SAM_AMG,
    CountingHub,
    image_input,
    random_rgb,
    single_torch_thread,
)
from workers.engine.blocks.masks import decode_rle_one
from workers.engine.core.cache import FeatureCache
from workers.engine.core.errors import BadInputError, ConfigError, UnknownPipelineError
from workers.engine.core.meter import Meter
from workers.engine.methods.catalogue import default_config, pipeline_names
from workers.engine.methods.global_local.config import GlobalLocalConfig
from workers.engine.methods.global_local.pipeline import GlobalLocalPipeline
from workers.engine.methods.registry import build_pipeline

_ = single_torch_thread  # imported for pytest

TINY_OVERRIDES: dict[str, Any] = {
    "proposal_source": "sam_tiny",
    "clip_model": "clip_tiny",
    "amg": TINY_SAM_AMG,
}


# -- config ----------------------------------------------------------------------------------------------


def test_paper_defaults_and_dataset_presets() -> None:
    config = default_config("global_local", "paper")
    assert isinstance(config, GlobalLocalConfig)
    assert config.clip_model == "clip_vit_b_32" and config.proposal_source == "sam_vit_h"
    assert config.resolved_v == 0.95 and config.r == 0.5 and config.score_scale == 100.0
    assert config.features.preprocessing == "reference" and config.peer_compat
    assert config.merged({"dataset": "refcocog"}).resolved_v == 0.85
    assert config.merged({"dataset": "refcoco+"}).resolved_v == 0.95
    assert config.merged({"dataset": "refcocog", "v": 0.5}).resolved_v == 0.5


def test_tiny_profile_uses_tiny_clip_and_real_mobile_sam() -> None:
    config = default_config("global_local", "tiny")
    assert config.clip_model == "clip_tiny" and config.proposal_source == "mobile_sam"


def test_config_round_trips_through_json() -> None:
    config = default_config("global_local", "tiny").merged(
        {
            "v": 0.7,
            "amg": {"points_per_side": 8},
            "max_overlap": 0.4,
            "features": {"preprocessing": "clean"},
            "peer_compat": False,
        }
    )
    data = json.loads(json.dumps(config.to_dict()))
    again = GlobalLocalConfig.from_dict(data)
    assert again == config
    assert again.amg.points_per_side == 8 and again.amg.pred_iou_thresh == 0.88  # merged, not replaced


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"vv": 0.9}, "'vv'"),
        ({"v": 1.5}, "'v'"),
        ({"r": "half"}, "'r'"),
        ({"dataset": "coco"}, "'dataset'"),
        ({"proposal_source": "freesolo"}, "'proposal_source'"),
        ({"amg": {"points_per_sid": 8}}, "'amg.points_per_sid'"),
        ({"amg": {"points_per_side": 0}}, "'amg.points_per_side'"),
        ({"amg": "x"}, "'amg'"),
        ({"max_overlap": 2}, "'max_overlap'"),
        ({"features": {"preprocessing": "clean"}}, "'peer_compat'"),
        ({"peer_compat": "yes"}, "'peer_compat'"),
        ({"features": {"max_masks_per_forward": 0}}, "'features.max_masks_per_forward'"),
    ],
)
def test_bad_config_names_the_key(overrides: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        default_config("global_local", "paper").merged(overrides)


def test_registry_lists_builds_and_refuses_unknown_names() -> None:
    assert "global_local" in pipeline_names()
    with pytest.raises(UnknownPipelineError, match="no_such_pipeline"):
        build_pipeline("no_such_pipeline", None, hub=None, cache=FeatureCache(), meter=Meter())
    with pytest.raises(ConfigError, match="profile"):
        default_config("global_local", "huge")


# -- ranking on tiny models -----------------------------------------------------------------------------


@pytest.fixture
def tiny_setup(model_hub: Any, single_torch_thread: None) -> tuple[GlobalLocalPipeline, CountingHub, Meter]:
    hub = CountingHub(model_hub)
    meter = Meter()
    pipeline = build_pipeline("global_local", TINY_OVERRIDES, hub, FeatureCache(memory_bytes=64 << 20), meter)
    assert isinstance(pipeline, GlobalLocalPipeline)
    return pipeline, hub, meter


def image_calls(meter: Meter) -> tuple[int, int]:
    return meter.calls("sam_tiny"), meter.calls("clip_tiny:image")


def test_predict_ranks_every_proposal_with_components(tiny_setup: tuple) -> None:
    pipeline, _, _ = tiny_setup
    rgb = random_rgb(48, 64, seed=11)
    ctx = pipeline.context(image_input(rgb))
    results = pipeline.predict(ctx, ["the man on the left", "a red umbrella"])
    proposals = pipeline.proposals(ctx)
    assert len(results) == 2 and len(proposals) > 1
    for ranked in results:
        assert len(ranked) == len(proposals)
        assert [c.rank for c in ranked] == list(range(len(ranked)))
        scores = [c.score for c in ranked]
        assert scores == sorted(scores, reverse=True)
        for c in ranked:
            assert set(c.components) == {"s_global", "s_local", "score"}
            assert c.components["score"] == c.score and -100.0 <= c.score <= 100.0
            mask = decode_rle_one(c.rle)
            assert mask.shape == (48, 64) and int(mask.sum()) == c.area
            json.dumps(c.to_json())
    first_scores = {c.rle["counts"]: c.score for c in results[0]}
    assert any(abs(first_scores[c.rle["counts"]] - c.score) > 1e-4 for c in results[1])  # the text matters


def test_score_is_100_cosine_of_the_v_mix_against_the_r_mix(tiny_setup: tuple) -> None:
    pipeline, hub, meter = tiny_setup
    config = pipeline.config.merged({"dataset": "refcocog", "r": 0.25})
    pipeline = GlobalLocalPipeline(config, hub=hub, cache=pipeline.cache, meter=meter)
    ctx = pipeline.context(image_input(random_rgb(seed=12)))
    ranked = pipeline.predict(ctx, ["Dog on the LEFT"])[0]
    proposals = pipeline.proposals(ctx)
    features = pipeline.visual_features(ctx, proposals)
    bundle = hub.inner.get("clip_tiny")
    with torch.no_grad():
        tokens = bundle.tokenizer(["dog on the left", "dog"])
        text = bundle.model.encode_text(tokens).float()
    t = 0.75 * text[0] + 0.25 * text[1]
    mixed = 0.85 * features["global"] + 0.15 * features["local"]
    expected = 100 * F.normalize(mixed, dim=-1) @ F.normalize(t, dim=-1)
    by_area_and_box = {(c.area, c.bbox_xyxy): c.score for c in ranked}
    for i in range(len(proposals)):
        box = tuple(float(v) for v in proposals.bbox_xyxy[i])
        assert by_area_and_box[(int(proposals.area[i]), box)] == pytest.approx(float(expected[i]), abs=1e-3)


def test_second_expression_does_no_image_work(tiny_setup: tuple) -> None:
    pipeline, hub, meter = tiny_setup
    ctx = pipeline.context(image_input(random_rgb(seed=13)))
    first = pipeline.predict(ctx, ["the cat"])[0]
    after_first = image_calls(meter)
    assert after_first[0] == 1 and after_first[1] >= 2
    sam_loads = hub.gets["sam_tiny"]
    second = pipeline.predict(ctx, ["the dog"])[0]
    assert image_calls(meter) == after_first
    assert hub.gets["sam_tiny"] == sam_loads  # SAM is not even asked for
    assert len(second) == len(first)


def test_prepare_then_predict_does_no_image_work(tiny_setup: tuple) -> None:
    pipeline, _, meter = tiny_setup
    ctx = pipeline.context(image_input(random_rgb(seed=14)))
    pipeline.prepare(ctx)
    prepared = image_calls(meter)
    assert prepared[0] == 1
    pipeline.predict(ctx, ["a", "b", "c"])
    assert image_calls(meter) == prepared


def test_batch_of_expressions_equals_one_at_a_time(tiny_setup: tuple) -> None:
    pipeline, _, _ = tiny_setup
    ctx = pipeline.context(image_input(random_rgb(seed=15)))
    expressions = ["the left zebra", "bright orange umbrella", "man in a white shirt"]
    batched = pipeline.predict(ctx, expressions)
    for expression, ranked in zip(expressions, batched, strict=True):
        single = pipeline.predict(ctx, [expression])[0]
        # Same score per mask (the order of near-ties may differ by float rounding between batch sizes).
        by_mask = {(c.rle["counts"], c.area): c.score for c in ranked}
        assert len(single) == len(ranked)
        for c in single:
            assert c.score == pytest.approx(by_mask[(c.rle["counts"], c.area)], abs=1e-4)


def test_disk_cache_serves_a_new_process_without_loading_sam(model_hub: Any, tmp_path: Path) -> None:
    rgb = random_rgb(seed=16)
    first_meter = Meter()
    first = build_pipeline(
        "global_local", TINY_OVERRIDES, CountingHub(model_hub), FeatureCache(cache_dir=tmp_path), first_meter
    )
    expected = first.predict(first.context(image_input(rgb)), ["the red car"])[0]

    hub, meter = CountingHub(model_hub), Meter()
    second = build_pipeline("global_local", TINY_OVERRIDES, hub, FeatureCache(cache_dir=tmp_path), meter)
    ranked = second.predict(second.context(image_input(rgb)), ["the red car"])[0]
    assert image_calls(meter) == (0, 0)
    assert hub.gets["sam_tiny"] == 0
    assert [c.rle for c in ranked] == [c.rle for c in expected]
    assert [c.score for c in ranked] == pytest.approx([c.score for c in expected], abs=1e-4)


def test_changed_feature_settings_recompute_features_but_not_proposals(tiny_setup: tuple) -> None:
    pipeline, hub, meter = tiny_setup
    ctx = pipeline.context(image_input(random_rgb(seed=17)))
    pipeline.predict(ctx, ["a cup"])[0]
    sam_calls, clip_calls = image_calls(meter)
    clean = GlobalLocalPipeline(
        pipeline.config.merged({"peer_compat": False, "features": {"preprocessing": "clean"}}),
        hub=hub,
        cache=pipeline.cache,
        meter=meter,
    )
    clean.predict(ctx, ["a cup"])[0]
    assert meter.calls("sam_tiny") == sam_calls
    assert meter.calls("clip_tiny:image") > clip_calls


def test_no_proposal_gives_empty_lists(tiny_setup: tuple) -> None:
    pipeline, hub, meter = tiny_setup
    strict = GlobalLocalPipeline(
        pipeline.config.merged({"min_area": 10**8}), hub=hub, cache=pipeline.cache, meter=meter
    )
    ctx = strict.context(image_input(random_rgb(seed=18)))
    assert strict.predict(ctx, ["anything", "at all"]) == [[], []]


def test_post_filters_apply(tiny_setup: tuple) -> None:
    pipeline, hub, meter = tiny_setup
    ctx = pipeline.context(image_input(random_rgb(seed=19)))
    everything = pipeline.proposals(ctx)
    limited = GlobalLocalPipeline(
        pipeline.config.merged({"max_proposals": 3, "max_overlap": 0.9}),
        hub=hub,
        cache=pipeline.cache,
        meter=meter,
    )
    kept = limited.proposals(ctx)
    assert 1 <= len(kept) <= 3 < len(everything)
    assert len(limited.predict(ctx, ["a bowl"])[0]) == len(kept)


def test_empty_expression_is_refused_before_model_work(tiny_setup: tuple) -> None:
    pipeline, _, meter = tiny_setup
    ctx = pipeline.context(image_input(random_rgb(seed=20)))
    with pytest.raises(BadInputError, match="empty"):
        pipeline.predict(ctx, ["a dog", "   "])
    assert image_calls(meter) == (0, 0)


# -- real MobileSAM on a real photo ------------------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_on_a_real_photo_with_real_mobile_sam(model_hub: Any, astronaut_rgb: np.ndarray) -> None:
    from PIL import Image

    rgb = np.asarray(Image.fromarray(astronaut_rgb).resize((160, 160), Image.Resampling.BILINEAR)).copy()
    meter = Meter()
    overrides = {"proposal_source": "mobile_sam", "clip_model": "clip_tiny", "amg": {"points_per_side": 8}}
    pipeline = build_pipeline("global_local", overrides, model_hub, FeatureCache(), meter, profile="tiny")
    ctx = pipeline.context(image_input(rgb))

    started = time.perf_counter()
    ranked = pipeline.predict(ctx, ["the woman in a white space suit"])[0]
    first_seconds = time.perf_counter() - started
    assert len(ranked) >= 2  # MobileSAM's real weights find several objects on the photo
    masks = np.stack([decode_rle_one(c.rle) for c in ranked])
    assert masks.shape[1:] == (160, 160)
    assert all(0 < c.area < 160 * 160 for c in ranked)
    assert len({c.rle["counts"] for c in ranked}) == len(ranked)  # distinct masks
    assert meter.calls("mobile_sam") == 1

    started = time.perf_counter()
    again = pipeline.predict(ctx, ["the flag on the left"])[0]
    second_seconds = time.perf_counter() - started
    assert meter.calls("mobile_sam") == 1 and len(again) == len(ranked)
    assert second_seconds < first_seconds
