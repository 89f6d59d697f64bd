"""Ref-Diff's mask scores: generative score, proposal-free proposals, filter, ramp, CLIP hard/soft, fusion.

The CLIP tests use the random tiny open_clip ViT: they check batching and masking invariants, never quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.engine.blocks.masks import Proposals
from workers.engine.blocks.text import parse_expression
from workers.engine.core.errors import BadInputError, ConfigError
from workers.engine.hub import ModelHub
from workers.engine.methods.refdiff.scores import (
    RegionClipEncoder,
    attention_proposals,
    fuse_scores,
    generative_scores,
    kept_for_scoring,
    positional_ramp,
    ramp_direction,
    text_mix,
)


def test_generative_score_is_mean_inside_minus_mean_outside() -> None:
    attention = torch.zeros(4, 4)
    attention[:2, :2] = 1.0
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True  # exactly the hot block: 1 - 0
    masks[1, :, :2] = True  # half of it hot: 0.5 - 0
    masks[2] = True  # the whole image: nothing outside, so mean outside is 0
    scores = generative_scores(attention, masks)
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.5, 0.25]), atol=1e-5, rtol=0)
    with pytest.raises(BadInputError):
        generative_scores(attention, masks[:, :2])


def test_attention_proposals_threshold_the_map_and_drop_repeats() -> None:
    attention = torch.tensor([[0.0, 0.2], [0.6, 1.0]])
    proposals, kept = attention_proposals(attention, [0.1, 0.15, 0.5, 0.95])
    assert kept == [0.1, 0.5, 0.95]  # 0.15 gives the same mask as 0.1
    assert proposals.area.tolist() == [3, 2, 1]
    quantiles, _ = attention_proposals(attention, [0.5], mode="quantile")
    assert quantiles.area.tolist() == [2]
    empty, kept = attention_proposals(torch.zeros(3, 3), [0.5])
    assert len(empty) == 0 and kept == []


def test_filter_keeps_the_largest_above_the_minimum_area() -> None:
    masks = np.zeros((4, 10, 10), dtype=bool)
    for i, side in enumerate([2, 9, 5, 7]):
        masks[i, :side, :side] = True
    proposals = Proposals.from_masks(masks)
    assert kept_for_scoring(proposals, max_proposals=2, min_area=0).tolist() == [False, True, False, True]
    assert kept_for_scoring(proposals, max_proposals=None, min_area=25).tolist() == [False, True, False, True]
    assert kept_for_scoring(proposals, max_proposals=3, min_area=49).tolist() == [False, True, False, False]


def test_ramp_matches_whole_words_and_peer_compat_matches_substrings() -> None:
    def direction(text: str, peer: bool = False) -> str | None:
        return ramp_direction(parse_expression(text).tokens, text, peer_compat=peer)

    assert direction("the man on the left") == "left"
    assert direction("Rightmost zebra") == "right"
    assert direction("the bright lamp") is None
    assert direction("the bright lamp", peer=True) == "right"  # the code's substring quirk
    assert direction("Left dog", peer=True) is None  # and its case sensitivity
    assert direction("left of the right car") == "left"


def test_positional_ramp_values() -> None:
    rgb = np.full((2, 9, 3), 200, dtype=np.uint8)
    left = positional_ramp(rgb, "left")
    np.testing.assert_allclose(left[0, :, 0], [200, 160, 120, 80, 40, 0, 0, 0, 0], atol=1e-4)
    right = positional_ramp(rgb, "right")
    np.testing.assert_allclose(right[0, :, 0], [0, 0, 0, 0, 40, 80, 120, 160, 200], atol=1e-4)
    np.testing.assert_array_equal(positional_ramp(rgb, None), rgb.astype(np.float32))


def test_fusion_code_and_paper_forms() -> None:
    g, h, s = torch.tensor([1.0, 0.0]), torch.tensor([0.2, 0.4]), torch.tensor([0.5, 0.1])
    torch.testing.assert_close(fuse_scores(g, h, s), 0.7 * h + 0.3 * s + 0.05 * g)
    torch.testing.assert_close(
        fuse_scores(g, h, s, fusion="paper", alpha=0.1), 0.1 * g + 0.9 * (0.7 * h + 0.3 * s)
    )
    torch.testing.assert_close(fuse_scores(g, None, None), g)
    with pytest.raises(ConfigError):
        fuse_scores(g, h, s, fusion="other")
    mixed = text_mix(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 2.0]]), 0.5, 0.5)
    torch.testing.assert_close(mixed, torch.tensor([[0.5, 0.5]]))


# -- CLIP region features ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(model_hub: ModelHub) -> RegionClipEncoder:
    return RegionClipEncoder(
        model_hub.get("clip_tiny").model, model_name="clip_tiny", max_masks_per_forward=8
    )


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(80, 112, 3), dtype=np.uint8)
    masks = np.zeros((3, 80, 112), dtype=bool)
    masks[0, 10:40, 5:60] = True
    masks[1, 30:80, 50:112] = True
    masks[2, 0:20, 0:20] = True
    return rgb, masks


def test_soft_attention_mask_structure(encoder: RegionClipEncoder) -> None:
    patch_masks = torch.tensor([[True, False, True], [False, True, False]])
    mask = encoder.soft_attention_mask(patch_masks)
    allowed = mask == 0
    assert mask.shape == (5, 5)
    assert allowed[0].tolist() == [True, False, True, False, True]  # itself and its own patches
    assert allowed[1].tolist() == [False, True, False, True, False]
    assert not allowed[2:, :2].any()  # patches never see a class token
    assert allowed[2:, 2:].all()


def test_soft_features_of_a_mask_do_not_depend_on_the_other_masks(encoder: RegionClipEncoder, scene) -> None:
    rgb, masks = scene
    together = encoder.soft_features(rgb, masks)
    assert together.shape == (3, encoder.output_dim)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(3))
    for i in range(3):
        alone = encoder.soft_features(rgb, masks[i : i + 1])
        torch.testing.assert_close(alone[0], together[i], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(together[0], together[1])


def test_hard_features_batched_equal_one_by_one(encoder: RegionClipEncoder, scene) -> None:
    rgb, masks = scene
    for mode in ("square", "shorter_side"):
        batched = encoder.hard_features(rgb.astype(np.float32), masks, mode)
        singles = torch.cat(
            [encoder.hard_features(rgb.astype(np.float32), masks[i : i + 1], mode) for i in range(3)]
        )
        torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-4)
    crops = encoder.hard_crops(rgb.astype(np.float32), masks, "shorter_side")
    assert crops[0].shape == (224, int(224 * 55 / 30), 3)  # 30 x 55 box, shorter side to 224
    assert min(crops[1].shape[:2]) == 224


def test_hard_crop_is_black_outside_the_mask(encoder: RegionClipEncoder) -> None:
    rgb = np.full((32, 32, 3), 255.0, dtype=np.float32)
    mask = np.zeros((1, 32, 32), dtype=bool)
    mask[0, 4:20, 4:20] = True
    mask[0, 4:8, 4:8] = False  # a hole in the corner of the box
    crop = encoder.hard_crops(rgb, mask, "square")[0]
    assert crop[:10, :10].max() == 0 and crop[100:120, 100:120].min() == 255
