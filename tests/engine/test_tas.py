"""The TAS pipeline on tiny models: captions shared and cached per image, scores, negatives, rectifier.

Most tests put known proposals (four coloured squares and the background) into the per-image cache under
the key the generator's result would have, so they exercise everything after SAM without paying for it;
``test_engine_runs_tas_end_to_end_with_sam_tiny`` runs the random ``sam_tiny`` generator through the engine.
Models: ``captioner_tiny`` (BLIP-2 layout) and ``clip_tiny`` from the session model store; WordNet is the
real one (``scripts/ensure-wordnet.sh``).
"""

from __future__ import annotations

import hashlib
import logging
import math

import numpy as np
import pytest

from tests.engine.ranking_fixtures import TINY_SAM_AMG
from workers.engine.blocks.captions.captioner import (
    Captioner,
    blur_image,
    blurred_background_crops,
    opencv_sigma,
)
from workers.engine.blocks.captions.config import CaptionConfig
from workers.engine.blocks.masks import Proposals
from workers.engine.blocks.proposals.cached import proposal_params
from workers.engine.core.cache import FeatureCache
from workers.engine.core.errors import BadInputError, ConfigError
from workers.engine.core.meter import Meter
from workers.engine.core.settings import EngineSettings
from workers.engine.core.types import ImageInput
from workers.engine.methods.catalogue import default_config, pipeline_names
from workers.engine.methods.registry import build_pipeline
from workers.engine.methods.tas import pipeline as tas_module
from workers.engine.methods.tas.config import SynonymRule, TasConfig
from workers.engine.methods.tas.lexicon import WordNetMissingError
from workers.engine.methods.tas.pipeline import TasPipeline, combine_scores, negative_phrases
from workers.engine.runtime import Engine

FAST_CAPTIONS = {"caption": {"num_beams": 1, "max_new_tokens": 3}, "min_area": 0}
CAPTIONER = "captioner_tiny"

# Four squares, one per quadrant, on a grey background (96 x 128).
SQUARES = {"top_left": (8, 8), "top_right": (8, 88), "bottom_left": (58, 8), "bottom_right": (58, 88)}
COLOURS = [(220, 30, 30), (30, 170, 40), (30, 60, 220), (235, 215, 30)]


def _scene() -> tuple[ImageInput, np.ndarray]:
    rgb = np.full((96, 128, 3), 128, dtype=np.uint8)
    masks = np.zeros((5, 96, 128), dtype=bool)
    for i, ((top, left), colour) in enumerate(zip(SQUARES.values(), COLOURS, strict=True)):
        rgb[top : top + 30, left : left + 32] = colour
        masks[i, top : top + 30, left : left + 32] = True
    masks[4] = ~masks[:4].any(axis=0)  # the background
    return ImageInput(rgb=rgb, sha256=hashlib.sha256(rgb.tobytes()).hexdigest()), masks


def _pipeline(hub, cache=None, meter=None, **overrides) -> TasPipeline:
    config = {**FAST_CAPTIONS, **overrides}
    cache = FeatureCache() if cache is None else cache  # an empty cache is falsy (it has a length)
    meter = Meter() if meter is None else meter
    return build_pipeline("tas", config, hub, cache, meter, profile="tiny")


def _seed_proposals(pipe: TasPipeline, image: ImageInput, masks: np.ndarray):
    ctx = pipe.context(image)
    params = proposal_params(pipe.hub, pipe.config.proposal_source, pipe.config.amg)
    ctx.cache.put(ctx.key("proposals", params), Proposals.from_masks(masks).to_state())
    return ctx


# -- config ------------------------------------------------------------------------------------------


def test_tas_is_registered_with_the_codes_constants():
    assert "tas" in pipeline_names()
    config = default_config("tas", "tiny")
    assert isinstance(config, TasConfig)
    assert (config.lambda_p, config.lambda_n, config.score_scale) == (0.1, 0.7, 100.0)
    assert (config.min_area, config.max_overlap, config.caption.blur_kernel) == (2000, 0.4, 75)
    amg = config.amg
    assert (amg.points_per_side, amg.pred_iou_thresh, amg.stability_score_thresh) == (8, 0.7, 0.7)
    assert amg.min_mask_region_area == 800
    assert (config.clip_model, config.captioner_model) == ("clip_tiny", CAPTIONER)
    paper = default_config("tas", "paper")
    assert (paper.clip_model, paper.captioner_model, paper.proposal_source) == (
        "clip_vit_b_32",
        "blip2_opt_2_7b",
        "sam_vit_h",
    )


def test_peer_compat_resolves_every_quirk_and_keys_override_it():
    ours, code = TasConfig(), TasConfig(peer_compat=True)
    assert (ours.resolved_spatial_match, code.resolved_spatial_match) == ("word", "substring")
    assert (ours.resolved_overlap_peer_compat, code.resolved_overlap_peer_compat) == (False, True)
    assert (ours.resolved_skip_punctuated, code.resolved_skip_punctuated) == (False, True)
    assert (ours.resolved_synonym_noun, code.resolved_synonym_noun) == ("head", "first")
    assert (ours.resolved_nan_guard, code.resolved_nan_guard) == (True, False)
    assert code.synonym_rule == SynonymRule(same_lemma=False, nouns_only=False)
    assert (
        "bottom" in ours.resolved_vocabulary["bottom"] and "bottom" not in code.resolved_vocabulary["bottom"]
    )
    mixed = TasConfig.from_dict({"peer_compat": True, "spatial_match": "word"})
    assert mixed.resolved_spatial_match == "word" and mixed.resolved_nan_guard is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"negative_template": "a photo"}, "negative_template"),
        ({"caption": {"blur_kernel": 74}}, "caption.blur_kernel"),
        ({"lambda_n": -1}, "lambda_n"),
        ({"spatial_match": "regex"}, "spatial_match"),
        ({"spatial_vocabulary": {"middle": ["centre"]}}, "spatial_vocabulary"),
        ({"lambda_q": 1}, "lambda_q"),
    ],
)
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        TasConfig.from_dict(overrides)


# -- scores and negatives ------------------------------------------------------------------------------


def test_combine_scores_is_the_codes_formula():
    s_v, p, n = np.array([20.0, 25.0, 22.0]), np.array([50.0, 40.0, 60.0]), np.array([10.0, 12.0, 8.0])
    raw, score = combine_scores(s_v, p, n, lambda_p=0.1, lambda_n=0.7)
    expected_raw = s_v + 0.1 * p - 0.7 * n
    assert np.allclose(raw, expected_raw)
    normalised = (expected_raw - expected_raw.min()) / (expected_raw.max() - expected_raw.min())
    assert np.allclose(score, np.exp(normalised) / np.exp(normalised).sum())
    assert int(np.argmax(score)) == int(np.argmax(expected_raw))


def test_n_score_with_no_negatives_is_zero_or_the_codes_nan():
    s_v, p = np.array([20.0, 20.0]), np.array([30.0, 30.0])
    raw, score = combine_scores(s_v, p, np.zeros(2), lambda_p=0.1, lambda_n=0.7)
    assert np.allclose(score, [0.5, 0.5])  # equal raw scores: equal weights, no division by zero
    _, code = combine_scores(s_v, p, np.full(2, np.nan), lambda_p=0.1, lambda_n=0.7, nan_guard=False)
    assert np.isnan(code).all()


def test_negative_phrases_drop_near_synonyms_of_the_target():
    rule = SynonymRule(use_wordnet=False)
    found = negative_phrases("a man riding a horse next to a woman", "the man", rule=rule)
    assert found.chunks == ("a horse", "a woman")
    assert found.excluded == ("a man",)
    assert found.target == "man"
    assert negative_phrases("a man", "the man", rule=rule).chunks == ()
    assert negative_phrases("", "the man", rule=rule).chunks == ()


# -- crops and the captioner ----------------------------------------------------------------------------


def test_blurred_background_crops_keep_the_mask_sharp():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    mask = np.zeros((1, 90, 120), dtype=bool)
    mask[0, 20:50, 30:90] = True
    (crop,) = blurred_background_crops(rgb, mask)
    array = np.asarray(crop)
    assert array.shape == (60, 60, 3)  # the 30 x 60 box padded to a square
    assert np.array_equal(array[15:45], rgb[20:50, 30:90])  # centred, mask pixels untouched
    assert not np.any(array[:15]) and not np.any(array[45:])  # black padding
    assert abs(opencv_sigma(75) - 11.6) < 1e-9  # 0.3 * ((75 - 1) / 2 - 1) + 0.8
    blurred = blur_image(rgb)
    assert blurred.shape == rgb.shape and blurred.std() < rgb.std() / 3  # kernel 75 flattens noise
    assert blur_image(rgb[:10, :10]).shape == (10, 10, 3)  # smaller than the kernel: still works
    with pytest.raises(BadInputError, match="N x H x W"):
        blurred_background_crops(rgb, mask[:, :50])


def test_captioner_batches_and_counts_one_call_per_image(model_hub):
    bundle = model_hub.get(CAPTIONER)
    meter = Meter()
    settings = CaptionConfig(max_new_tokens=2, num_beams=1, batch_size=2)
    captioner = Captioner(bundle, model_name=CAPTIONER, settings=settings, meter=meter)
    generate_calls = []
    original = bundle.model.generate

    def counting_generate(**kwargs):
        generate_calls.append(kwargs["pixel_values"].shape[0])
        return original(**kwargs)

    image, masks = _scene()
    crops = blurred_background_crops(image.rgb, masks)
    bundle.model.generate = counting_generate
    try:
        captions = captioner.caption(crops)
    finally:
        del bundle.model.generate
    assert len(captions) == 5 and all(isinstance(c, str) for c in captions)
    assert generate_calls == [2, 2, 1]
    assert meter.calls(CAPTIONER) == 5


# -- the pipeline ------------------------------------------------------------------------------------


def test_expressions_share_captions_and_a_cache_hit_does_no_captioning(model_hub):
    image, masks = _scene()
    cache, meter = FeatureCache(), Meter()
    pipe = _pipeline(model_hub, cache, meter)
    ctx = _seed_proposals(pipe, image, masks)
    expressions = ["the red square", "green box on the right", "the background", "blue one at the bottom"]
    results = pipe.predict(ctx, expressions)
    assert (
        meter.calls(CAPTIONER) == len(masks) + 1
    )  # one caption per mask and one of the image, not per expression
    assert meter.calls("clip_tiny:image") >= 1
    for candidates in results:
        assert [c.rank for c in candidates] == list(range(len(masks)))
        assert {"s_v", "p", "n", "raw", "score", "rectifier_fired", "rectifier_pick"} <= set(
            candidates[0].components
        )
        assert all(math.isfinite(c.score) for c in candidates)
        assert math.isclose(sum(c.score for c in candidates), 1.0, rel_tol=1e-6)  # softmax over the masks

    before = meter.snapshot()["models"]
    again = pipe.predict(ctx, ["the yellow square"])
    fresh = _pipeline(model_hub, cache, meter).predict(pipe.context(image), ["a red square", "the right one"])
    after = meter.snapshot()["models"]
    assert after[CAPTIONER]["calls"] == before[CAPTIONER]["calls"]  # cache hits: no captioning
    assert after["clip_tiny:image"]["calls"] == before["clip_tiny:image"]["calls"]
    assert len(again[0]) == len(fresh[0]) == len(masks)

    longer = _pipeline(model_hub, cache, meter, caption={"num_beams": 1, "max_new_tokens": 4})
    longer.predict(longer.context(image), ["the red square"])
    assert meter.calls(CAPTIONER) == before[CAPTIONER]["calls"] + len(masks) + 1  # new setting, new captions


def test_pipeline_n_score_without_negatives(model_hub, monkeypatch):
    image, masks = _scene()
    ours = _pipeline(model_hub)
    monkeypatch.setattr(ours, "image_caption", lambda ctx: "a man")
    (candidates,) = ours.predict(_seed_proposals(ours, image, masks), ["the man"])
    assert all(c.components["n"] == 0.0 and c.components["negatives"] == 0.0 for c in candidates)
    assert all(math.isfinite(c.score) and "nan" not in c.components for c in candidates)

    code = _pipeline(model_hub, peer_compat=True)
    monkeypatch.setattr(code, "image_caption", lambda ctx: "a man")
    (candidates,) = code.predict(_seed_proposals(code, image, masks), ["the man"])
    assert all(c.components["nan"] == 1.0 for c in candidates)  # the code's NaN, reported as 0 + flag
    order = [int(np.flatnonzero(np.all(masks == _decode(c.rle), axis=(1, 2)))[0]) for c in candidates]
    assert order == list(range(len(masks)))  # all NaN: the first mask wins, as torch.argmax


def test_pipeline_with_negatives_has_a_nonzero_n(model_hub, monkeypatch):
    image, masks = _scene()
    pipe = _pipeline(model_hub)
    monkeypatch.setattr(pipe, "image_caption", lambda ctx: "a man riding a horse next to a woman")
    (candidates,) = pipe.predict(_seed_proposals(pipe, image, masks), ["the man"])
    assert all(c.components["negatives"] == 2.0 and c.components["n"] != 0.0 for c in candidates)


def _decode(rle: dict) -> np.ndarray:
    from workers.engine.blocks.masks import decode_rle_one

    return decode_rle_one(rle)


def test_rectifier_in_the_pipeline(model_hub):
    image, masks = _scene()
    masks = masks[:4]  # one square per quadrant (the background's centroid would sit in the bottom right)
    pipe = _pipeline(model_hub)
    ctx = _seed_proposals(pipe, image, masks)
    bottom_right, bright = pipe.predict(ctx, ["square at the bottom right", "the bright square"])
    assert bottom_right[0].components["rectifier_fired"] == 1.0
    assert bottom_right[0].components["rectifier_pick"] == 1.0
    assert np.array_equal(_decode(bottom_right[0].rle), masks[3])
    assert all(c.components["rectifier_fired"] == 0.0 for c in bright)
    off = _pipeline(model_hub, rectifier=False)
    (plain,) = off.predict(_seed_proposals(off, image, masks), ["square at the bottom right"])
    assert all(c.components["rectifier_fired"] == 0.0 for c in plain)
    assert [c.score for c in plain] == sorted((c.score for c in plain), reverse=True)


def test_missing_wordnet_is_an_error_naming_the_fix_or_a_lemma_fallback(model_hub, monkeypatch, caplog):
    def missing():
        raise WordNetMissingError(
            "WordNet is not installed; install WordNet with `scripts/ensure-wordnet.sh`"
        )

    monkeypatch.setattr(tas_module, "load_wordnet", missing)
    image, masks = _scene()
    strict = _pipeline(model_hub)
    with pytest.raises(WordNetMissingError, match="ensure-wordnet.sh"):
        strict.predict(_seed_proposals(strict, image, masks), ["the red square"])
    lenient = _pipeline(model_hub, lexicon_fallback="exact")
    monkeypatch.setattr(lenient, "image_caption", lambda ctx: "a square and a man")
    with caplog.at_level(logging.WARNING, logger="workers.engine.methods.tas.pipeline"):
        (candidates,) = lenient.predict(_seed_proposals(lenient, image, masks), ["the red square"])
    assert candidates[0].components["negatives"] == 1.0  # "a square" matched by lemma, "a man" kept
    assert "lemma only" in caplog.text


def test_engine_runs_tas_end_to_end_with_sam_tiny(model_dir, model_hub):
    engine = Engine(
        EngineSettings(model_dir=model_dir, cache_dir=None, device="cpu", profile="tiny"), hub=model_hub
    )
    image, _ = _scene()
    config = {**FAST_CAPTIONS, "proposal_source": "sam_tiny", "amg": TINY_SAM_AMG, "max_overlap": None}
    with engine.meter.capture() as used:
        results = engine.predict(
            image, ["the red square", "left one"], pipeline="tas", config=config
        ).candidates
    assert len(results) == 2
    n_masks = len(results[0])
    assert n_masks >= 1 and len(results[1]) == n_masks
    assert used.calls("sam_tiny") == 1
    assert used.calls(CAPTIONER) == n_masks + 1
    assert engine.resolve_config("tas", config)["proposal_source"] == "sam_tiny"
