"""The ``lgd`` pipeline on the tiny store models: S = S_van + alpha S_att + beta S_sur, ablations, cache.

Proposals come from the random ``sam_tiny`` (a dozen masks, fast), CLIP is ``clip_tiny`` and the MLLM
``mllm_tiny``; the vanilla term is checked against the ``global_local`` pipeline under the same keys.

The image-level work (proposals, mask features) is done once per module in a shared cache; each test that
counts MLLM calls uses its own ``max_new_tokens`` (part of the description cache key), so the descriptions
another test left in the cache never answer for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.engine.ranking_fixtures import TINY_SAM_AMG, CountingHub, image_input, random_rgb
from workers.engine.core.cache import FeatureCache
from workers.engine.core.errors import ConfigError
from workers.engine.core.meter import Meter
from workers.engine.methods.catalogue import default_config, pipeline_names, resolve_config
from workers.engine.methods.global_local.config import GlobalLocalConfig
from workers.engine.methods.lgd.config import LgdConfig
from workers.engine.methods.lgd.pipeline import LgdPipeline
from workers.engine.methods.registry import build_pipeline

BASE = {
    "proposal_source": "sam_tiny",
    "amg": TINY_SAM_AMG,
    "clip_model": "clip_tiny",
    "mllm_model": "mllm_tiny",
}
EXPRESSIONS = ["man in the white shirt on the left", "the red car", "dog under the table"]


@pytest.fixture
def hub(model_hub: Any) -> CountingHub:
    return CountingHub(model_hub)


@pytest.fixture(scope="module")
def shared_cache() -> FeatureCache:
    return FeatureCache(memory_bytes=256 << 20)


def _build(hub: Any, cache: FeatureCache, meter: Meter, **overrides: Any) -> LgdPipeline:
    pipeline = build_pipeline("lgd", {**BASE, **overrides}, hub, cache, meter, profile="tiny")
    assert isinstance(pipeline, LgdPipeline)
    return pipeline


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return random_rgb(48, 64, seed=3)


def test_lgd_is_registered_with_profile_model_names() -> None:
    assert "lgd" in pipeline_names()
    assert default_config("lgd", "tiny").mllm_model == "mllm_tiny"
    paper = default_config("lgd", "paper")
    assert (paper.mllm_model, paper.alpha, paper.beta) == ("llava_1_5_7b", 1.0, 0.5)
    assert paper.use_van and paper.use_att and paper.use_sur
    assert resolve_config("lgd", {"mllm_model": "smolvlm_256m"}, "paper").mllm_model == "smolvlm_256m"
    # every Global-Local key is an LGD key with the same default
    assert set(GlobalLocalConfig.field_names()) <= set(LgdConfig.field_names())
    assert LgdConfig().vanilla_config() == GlobalLocalConfig()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"use_van": False, "use_att": False, "use_sur": False}, "turn at least one on"),
        ({"alpha": -1}, "'alpha'"),
        ({"generation": {"max_new_tokens": 0}}, "'generation.max_new_tokens'"),
        ({"prompt_set": "missing_prompts"}, "'prompt_set'"),
        ({"generation": {"batch_size": 0}}, "'generation.batch_size'"),
    ],
)
def test_bad_config_is_refused_naming_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LgdConfig.from_dict(overrides)


def test_alpha_beta_zero_is_exactly_the_global_local_ranking(
    hub: CountingHub, shared_cache: FeatureCache, rgb: np.ndarray
) -> None:
    cache, meter = shared_cache, Meter()
    lgd = _build(hub, cache, meter, alpha=0.0, beta=0.0, generation={"max_new_tokens": 4})
    vanilla_config = {k: v for k, v in BASE.items() if k in GlobalLocalConfig.field_names()}
    vanilla = build_pipeline("global_local", vanilla_config, hub, cache, meter, profile="tiny")
    image = image_input(rgb)

    ours = lgd.predict(lgd.context(image), EXPRESSIONS)
    sam_calls = meter.calls("sam_tiny")
    theirs = vanilla.predict(vanilla.context(image), EXPRESSIONS)
    assert meter.calls("mllm_tiny") == 1  # the terms were computed (weighted 0), in one generate call
    assert meter.calls("sam_tiny") == sam_calls  # proposals and mask features shared through the cache
    assert len(ours[0]) >= 3
    for mine, ref in zip(ours, theirs, strict=True):
        assert [c.rle["counts"] for c in mine] == [c.rle["counts"] for c in ref]
        assert [c.components["s_van"] for c in mine] == [c.components["score"] for c in ref]
        assert [c.score for c in mine] == [c.score for c in ref]
        assert all({"s_van", "s_att", "s_sur", "score"} <= set(c.components) for c in mine)
    # the description terms are real scores, not zeros
    assert any(abs(c.components["s_att"]) > 0 for c in ours[0])


def test_score_is_the_weighted_sum_and_ranks_the_candidates(
    hub: CountingHub, shared_cache: FeatureCache, rgb: np.ndarray
) -> None:
    lgd = _build(hub, shared_cache, Meter(), alpha=0.7, beta=0.3, generation={"max_new_tokens": 3})
    (ranked,) = lgd.predict(lgd.context(image_input(rgb)), EXPRESSIONS[:1])
    for c in ranked:
        parts = c.components
        assert parts["score"] == pytest.approx(
            parts["s_van"] + 0.7 * parts["s_att"] + 0.3 * parts["s_sur"], abs=1e-9
        )
        assert c.score == parts["score"]
    scores = [c.score for c in ranked]
    assert scores == sorted(scores, reverse=True)
    assert [c.rank for c in ranked] == list(range(len(ranked)))


def test_ablation_switches_drop_terms_and_their_mllm_work(
    hub: CountingHub, shared_cache: FeatureCache, rgb: np.ndarray
) -> None:
    image = image_input(rgb)

    meter = Meter()
    no_att = _build(hub, shared_cache, meter, use_att=False, beta=2.0, generation={"max_new_tokens": 5})
    (ranked,) = no_att.predict(no_att.context(image), EXPRESSIONS[:1])
    assert "s_att" not in ranked[0].components and "s_sur" in ranked[0].components
    for c in ranked:
        assert c.score == pytest.approx(c.components["s_van"] + 2.0 * c.components["s_sur"], abs=1e-9)
    (described,) = no_att.descriptions(no_att.context(image), EXPRESSIONS[:1])
    assert described.attribute is None and described.surrounding

    sur_only = _build(
        hub, shared_cache, Meter(), use_van=False, use_att=False, generation={"max_new_tokens": 5}
    )
    (ranked,) = sur_only.predict(sur_only.context(image), EXPRESSIONS[:1])
    assert all(c.score == pytest.approx(0.5 * c.components["s_sur"], abs=1e-9) for c in ranked)

    meter, before = Meter(), hub.gets["mllm_tiny"]
    van_only = _build(hub, shared_cache, meter, use_att=False, use_sur=False)
    (ranked,) = van_only.predict(van_only.context(image), EXPRESSIONS[:1])
    assert meter.calls("mllm_tiny") == 0 and hub.gets["mllm_tiny"] == before  # the MLLM is not even loaded
    assert set(ranked[0].components) == {"s_van", "score"}
    assert all(c.score == c.components["s_van"] for c in ranked)


def test_descriptions_are_cached_and_exposed(
    hub: CountingHub, shared_cache: FeatureCache, rgb: np.ndarray
) -> None:
    cache, meter = shared_cache, Meter()
    lgd = _build(hub, cache, meter, generation={"max_new_tokens": 6})
    image = image_input(rgb)
    first = lgd.predict(lgd.context(image), EXPRESSIONS)
    assert meter.calls("mllm_tiny") == 1  # three expressions, both kinds: one generate call

    described = lgd.descriptions(lgd.context(image), EXPRESSIONS)
    again = lgd.predict(lgd.context(image), EXPRESSIONS)
    assert meter.calls("mllm_tiny") == 1  # both served from the cache
    assert [[c.score for c in r] for r in again] == [[c.score for c in r] for r in first]
    assert [d.expression for d in described] == EXPRESSIONS
    for d in described:
        for text in (d.attribute, d.surrounding):
            assert text and (text.startswith("A photo of") or text.startswith("a photo of"))
        assert set(d.to_dict()) == {"expression", "attribute", "surrounding"}

    # Another pipeline object on the same cache (another job, same settings) reuses them too.
    other = _build(hub, cache, meter, generation={"max_new_tokens": 6})
    other.predict(other.context(image), EXPRESSIONS[1:])
    assert meter.calls("mllm_tiny") == 1


def test_an_empty_expression_is_refused_before_model_work(hub: CountingHub, rgb: np.ndarray) -> None:
    from workers.engine.core.errors import BadInputError

    meter = Meter()
    lgd = _build(hub, FeatureCache(memory_bytes=1 << 20), meter)
    with pytest.raises(BadInputError):
        lgd.predict(lgd.context(image_input(rgb)), ["the red car", "   "])
    assert meter.snapshot()["models"] == {}
