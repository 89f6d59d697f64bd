"""The ``refdiff`` pipeline on the tiny random SD and CLIP models: both proposal modes, caching, the filter.

Wiring only (random weights): the tests check which models run, what is cached per sentence, and how the
filter and ``peer_compat`` rank, never whether the right object wins.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from workers.engine.blocks.masks import Proposals
from workers.engine.blocks.proposals.cached import proposal_params
from workers.engine.blocks.text import parse_expression
from workers.engine.core.cache import FeatureCache
from workers.engine.core.errors import ConfigError
from workers.engine.core.meter import Meter
from workers.engine.core.types import ImageInput
from workers.engine.hub import ModelHub
from workers.engine.methods.catalogue import default_config, pipeline_names
from workers.engine.methods.refdiff.config import RefDiffConfig
from workers.engine.methods.refdiff.pipeline import RefDiffPipeline
from workers.engine.methods.registry import build_pipeline
from workers.engine.store.catalogue import models_of_family
from workers.engine.store.manifest import ModelStore

SAM_SOURCES = models_of_family("sam")

# A 128 px SD input (16 x 16 latent) and one UNet step keep each generative pass short on a CPU.
FAST = {"noising": {"image_size": 128, "steps": 10, "strength": 0.1}, "min_area": 0}
SENTENCES = ["the red square on the left", "a blue box"]


def _image() -> ImageInput:
    rgb = np.full((72, 96, 3), 128, dtype=np.uint8)
    rgb[10:40, 5:40] = (220, 30, 30)
    rgb[30:70, 50:90] = (30, 60, 220)
    return ImageInput(rgb=rgb, sha256=hashlib.sha256(rgb.tobytes()).hexdigest())


@pytest.fixture
def hub(model_store: ModelStore):
    hub = ModelHub(model_store, device="cpu", memory_budget_mb=2048)
    yield hub
    hub.clear()


def _pipeline(hub: ModelHub, cache: FeatureCache, meter: Meter, **overrides) -> RefDiffPipeline:
    pipeline = build_pipeline("refdiff", {**FAST, **overrides}, hub, cache, meter, profile="tiny")
    assert isinstance(pipeline, RefDiffPipeline)
    return pipeline


def test_registered_with_tiny_profile_defaults() -> None:
    assert "refdiff" in pipeline_names()
    config = default_config("refdiff", "tiny")
    assert isinstance(config, RefDiffConfig)
    assert (config.diffusion_model, config.clip_model, config.proposal_source) == (
        "sd_tiny",
        "clip_tiny",
        "mobile_sam",
    )
    assert config.noising.image_size == 256
    paper = default_config("refdiff", "paper")
    assert (paper.diffusion_model, paper.clip_model, paper.noising.image_size) == (
        "sd_1_5",
        "clip_vit_b_16",
        1024,
    )
    assert (
        paper.noising.steps,
        paper.noising.strength,
        paper.noising.guidance_scale,
        paper.max_proposals,
    ) == (20, 0.1, 9.0, 10)
    assert paper.resolved_min_area == 10000
    assert RefDiffConfig(dataset="refcocog").resolved_min_area == 0
    with pytest.raises(ConfigError, match="proposal_source"):
        RefDiffConfig(proposal_source="freesolo")
    with pytest.raises(ConfigError, match="runs no denoising step"):
        RefDiffConfig.from_dict({"noising": {"steps": 5, "strength": 0.1}})


def test_proposal_free_mode_ranks_threshold_masks_without_sam(hub: ModelHub) -> None:
    meter, cache = Meter(), FeatureCache()
    pipeline = _pipeline(
        hub,
        cache,
        meter,
        proposal_source="attention",
        hard_crop="square",
        attention_thresholds=[0.1, 0.3, 0.5, 0.7, 0.9],
    )
    image = _image()
    ctx = pipeline.context(image)
    results = pipeline.predict(ctx, SENTENCES)
    assert len(results) == 2
    for ranked in results:
        assert ranked, "the attention map's thresholds always give at least one mask"
        assert [c.rank for c in ranked] == list(range(len(ranked)))
        assert all(c.rle["size"] == [72, 96] for c in ranked)
        assert {"s_g", "hard", "soft", "score", "threshold"} <= set(ranked[0].components)
        scores = [c.score for c in ranked]
        assert scores == sorted(scores, reverse=True)
    assert not any(hub.load_counts[name] for name in SAM_SOURCES)
    assert not any(hub.is_loaded(name) for name in SAM_SOURCES)
    assert meter.calls("sd_tiny:unet") == 1  # both sentences in one UNet batch, one step


def test_each_sentence_gets_its_own_cached_map(hub: ModelHub) -> None:
    meter, cache = Meter(), FeatureCache()
    pipeline = _pipeline(hub, cache, meter, proposal_source="attention", use_discriminative=False)
    ctx = pipeline.context(_image())
    parsed = [parse_expression(s) for s in SENTENCES]
    first = pipeline.attention_maps(ctx, SENTENCES, parsed)
    assert first[0].image_map.shape == (72, 96)
    assert not torch.allclose(first[0].square_map, first[1].square_map)
    assert not torch.allclose(first[0].image_map, first[1].image_map)
    calls = meter.calls("sd_tiny:unet")
    again = pipeline.attention_maps(ctx, list(reversed(SENTENCES)), list(reversed(parsed)))
    assert meter.calls("sd_tiny:unet") == calls  # cache hits: no UNet call
    torch.testing.assert_close(again[0].square_map, first[1].square_map)
    torch.testing.assert_close(again[1].square_map, first[0].square_map)
    # A sentence alone (fresh cache) gives the map it got in the batch: rows never mix.
    alone = _pipeline(hub, FeatureCache(), Meter(), proposal_source="attention", use_discriminative=False)
    single = alone.attention_maps(alone.context(_image()), SENTENCES[1:], parsed[1:])
    torch.testing.assert_close(single[0].square_map, first[1].square_map, atol=1e-4, rtol=1e-4)
    assert not hub.is_loaded("clip_tiny")  # generative-only: no CLIP


def _inject_proposals(pipeline: RefDiffPipeline, image: ImageInput, masks: np.ndarray) -> None:
    """Put SAM proposals in the cache so the SAM-mode path runs without SAM's cost."""
    ctx = pipeline.context(image)
    params = proposal_params(pipeline.hub, pipeline.config.proposal_source, pipeline.config.amg)
    ctx.cache.put(ctx.key("proposals", params), Proposals.from_masks(masks).to_state())


def test_sam_mode_filtered_proposals_never_win_and_peer_compat_scores_them_zero(hub: ModelHub) -> None:
    image = _image()
    for peer in (False, True):
        cache = FeatureCache()
        pipeline = _pipeline(hub, cache, Meter(), use_discriminative=False, min_area=50, peer_compat=peer)
        ctx = pipeline.context(image)
        sentence = SENTENCES[0]
        attention = pipeline.attention_maps(ctx, [sentence], [parse_expression(sentence)])
        low = (attention[0].image_map < 0.5).numpy()  # the cold part: mean inside < mean outside
        hot = np.zeros_like(low)
        y, x = np.unravel_index(int(attention[0].image_map.argmax()), low.shape)
        hot[y, x] = True  # one pixel at the peak: area 1 <= min_area, filtered
        _inject_proposals(pipeline, image, np.stack([low, hot]))
        ranked = pipeline.predict(ctx, [sentence])[0]
        assert not hub.is_loaded("mobile_sam")
        if not peer:
            assert len(ranked) == 1 and ranked[0].area == int(low.sum())
            assert ranked[0].score < 0  # the only kept proposal wins although it scores below 0
        else:
            assert len(ranked) == 2
            assert ranked[0].area == 1 and ranked[0].score == 0.0  # the code's quirk: a filtered mask wins
            assert ranked[0].components["filtered"] == 1.0 and ranked[1].components["filtered"] == 0.0
            assert ranked[1].score < 0


def test_sam_mode_with_clip_scores_and_prepare(hub: ModelHub) -> None:
    image = _image()
    meter, cache = Meter(), FeatureCache()
    pipeline = _pipeline(hub, cache, meter)
    masks = np.zeros((3, 72, 96), dtype=bool)
    masks[0, 10:40, 5:40] = True
    masks[1, 30:70, 50:90] = True
    masks[2] = True
    _inject_proposals(pipeline, image, masks)
    ctx = pipeline.context(image)
    pipeline.prepare(ctx)
    assert meter.stage_calls("clip_soft") == 1 and meter.stage_calls("sd_encode") == 1
    results = pipeline.predict(ctx, SENTENCES)
    assert meter.stage_calls("clip_soft") == 1 and meter.stage_calls("sd_encode") == 1  # image work reused
    assert meter.stage_calls("clip_hard") == 2  # the left ramp makes its own hard crops
    for ranked in results:
        assert sorted(c.area for c in ranked) == sorted(int(m.sum()) for m in masks)
        top = ranked[0].components
        expected = 0.7 * top["hard"] + 0.3 * top["soft"] + 0.05 * top["s_g"]
        assert abs(ranked[0].score - expected) < 1e-5
        assert all(-1.0 <= c.components["hard"] <= 1.0 for c in ranked)
