"""Ensemble: fusion of member rankings (a fixture where two members disagree) and its config at the door."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from workers.engine.core.errors import ConfigError
from workers.engine.core.types import Candidate
from workers.engine.methods.catalogue import resolve_config
from workers.engine.methods.ensemble.fusion import fuse


def _mask(i: int) -> dict:
    m = np.zeros((6, 6), dtype=np.uint8)
    m[i, :] = 1  # mask i is row i: distinct RLEs
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [6, 6], "counts": rle["counts"].decode("ascii")}


def _ranking(order: list[int], scores: list[float]) -> list[Candidate]:
    return [
        Candidate(r, _mask(i), (0.0, float(i), 6.0, float(i + 1)), 6, s, {})
        for r, (i, s) in enumerate(zip(order, scores, strict=True))
    ]


# Member a ranks masks A > B > C; member b ranks C > B > D (it never proposed A).
A, B, C, D = 0, 1, 2, 3
MEMBER_A = _ranking([A, B, C], [0.9, 0.5, 0.1])
MEMBER_B = _ranking([C, B, D], [30.0, 20.0, 10.0])


def _by_mask(ranked: list[Candidate]) -> dict[int, Candidate]:
    return {int(c.bbox_xyxy[1]): c for c in ranked}


def test_rrf_of_two_disagreeing_members_matches_hand_values() -> None:
    fused = fuse([MEMBER_A, MEMBER_B], ["a", "b"], fusion="rrf", rrf_k=60)
    got = _by_mask(fused)
    expected = {
        A: 1 / 61,
        B: 1 / 62 + 1 / 62,
        C: 1 / 63 + 1 / 61,
        D: 1 / 63,
    }
    for mask, value in expected.items():
        assert got[mask].score == pytest.approx(value)
    # C (1st for b, 3rd for a) narrowly beats B (2nd for both): 1/61 + 1/63 > 2/62, then A (1st for a only)
    assert [int(c.bbox_xyxy[1]) for c in fused] == [C, B, A, D]
    assert [c.rank for c in fused] == [0, 1, 2, 3]
    assert got[B].components == pytest.approx(
        {"rank_a": 2.0, "score_a": 0.5, "rank_b": 2.0, "score_b": 20.0, "score": 2 / 62}
    )
    assert got[A].components["rank_b"] == -1.0 and got[A].components["score_b"] == 0.0
    assert got[D].components["rank_a"] == -1.0


def test_rrf_weights_and_k_change_the_winner() -> None:
    fused = fuse([MEMBER_A, MEMBER_B], ["a", "b"], fusion="rrf", rrf_k=0, weights=[3.0, 1.0])
    # k = 0: A 3/1 = 3; B 3/2 + 1/2 = 2; C 3/3 + 1/1 = 2; D 1/3
    assert [int(c.bbox_xyxy[1]) for c in fused][0] == A
    assert _by_mask(fused)[A].score == pytest.approx(3.0)


def test_minmax_normalises_each_member_before_averaging() -> None:
    fused = _by_mask(fuse([MEMBER_A, MEMBER_B], ["a", "b"], fusion="minmax"))
    # a: A 1, B 0.5, C 0; b: C 1, B 0.5, D 0; mean over two members (absent = 0)
    assert fused[A].score == pytest.approx(0.5)
    assert fused[B].score == pytest.approx(0.5)
    assert fused[C].score == pytest.approx(0.5)
    assert fused[D].score == pytest.approx(0.0)


def test_zscore_and_a_single_member_keep_its_order() -> None:
    fused = fuse([MEMBER_B], ["b"], fusion="zscore")
    assert [int(c.bbox_xyxy[1]) for c in fused] == [C, B, D]
    assert fused[0].score == pytest.approx((30 - 20) / np.std([30, 20, 10]))


def test_fusion_of_nothing_and_bad_arguments() -> None:
    assert fuse([[], []], ["a", "b"]) == []
    with pytest.raises(ValueError, match="2 rankings for 1 member names"):
        fuse([MEMBER_A, MEMBER_B], ["a"])
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse([MEMBER_A], ["a"], fusion="borda")


def test_ensemble_config_is_checked_at_the_door() -> None:
    config = resolve_config("ensemble", {"members": ["global_local", "tas"]}, "tiny")
    assert config.member_profile == "tiny"
    assert config.member_config("tas").proposal_source == "mobile_sam"  # the tiny profile's stand-in
    with pytest.raises(ConfigError, match="repeats a pipeline"):
        resolve_config("ensemble", {"members": ["tas", "tas"]})
    with pytest.raises(ConfigError, match="unknown pipeline 'nope'"):
        resolve_config("ensemble", {"members": ["nope"]})
    with pytest.raises(ConfigError, match="ensembles do not nest"):
        resolve_config("ensemble", {"members": ["ensemble"]})
    with pytest.raises(ConfigError, match="'weights' has 1 values for 2 members"):
        resolve_config("ensemble", {"weights": [1.0]})
    with pytest.raises(ConfigError, match=r"member_configs.tas.*'bogus'"):
        resolve_config("ensemble", {"member_configs": {"tas": {"bogus": 1}}})
    with pytest.raises(ConfigError, match="not among 'members'"):
        resolve_config("ensemble", {"member_configs": {"lgd": {}}})
    with pytest.raises(ConfigError, match="'member_profile' must be one of"):
        resolve_config("ensemble", {"member_profile": "huge"})


def test_a_missing_member_model_fails_before_any_work_naming_the_member_key(tmp_path) -> None:
    from tests.engine.ranking_fixtures import image_input
    from workers.engine.core.errors import ModelStoreError
    from workers.engine.core.settings import EngineSettings
    from workers.engine.runtime import Engine

    engine = Engine(
        EngineSettings(model_dir=tmp_path / "empty", cache_dir=None, device="cpu", profile="tiny")
    )
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    with pytest.raises(ModelStoreError, match=r"members\.global_local\.(clip_model|proposal_source)"):
        engine.predict(image_input(rgb), ["the thing"], pipeline="ensemble")


def test_members_share_one_proposal_run_and_the_fusion_equals_fuse_of_their_rankings(model_hub) -> None:
    from tests.engine.ranking_fixtures import TINY_SAM_AMG, image_input, random_rgb
    from workers.engine.core.cache import FeatureCache
    from workers.engine.core.meter import Meter
    from workers.engine.methods.registry import build_pipeline

    shared = {"proposal_source": "sam_tiny", "amg": TINY_SAM_AMG, "clip_model": "clip_tiny"}
    config = {
        "members": ["global_local", "lgd"],
        "member_configs": {
            "global_local": shared,
            "lgd": {**shared, "use_att": False, "use_sur": False, "r": 0.0},  # no MLLM call
        },
    }
    cache, meter = FeatureCache(memory_bytes=64 << 20), Meter()
    ensemble = build_pipeline("ensemble", config, model_hub, cache, meter, profile="tiny")
    ctx = ensemble.context(image_input(random_rgb(48, 64, seed=5)))
    expressions = ["the red car on the left", "a dog"]
    fused = ensemble.predict(ctx, expressions)
    assert meter.calls("sam_tiny") == 1  # one automatic-mask run, shared by both members
    members = ensemble.members()
    answers = {name: member.predict(ctx, expressions) for name, member in members.items()}
    assert meter.calls("sam_tiny") == 1
    for e in range(len(expressions)):
        expected = fuse([answers["global_local"][e], answers["lgd"][e]], ["global_local", "lgd"])
        assert [c.rle for c in fused[e]] == [c.rle for c in expected]
        assert [c.score for c in fused[e]] == pytest.approx([c.score for c in expected])
        # the same proposals: every fused candidate was ranked by both members
        assert all(c.components["rank_global_local"] >= 1 and c.components["rank_lgd"] >= 1 for c in fused[e])
