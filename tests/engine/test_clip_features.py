"""CLIP mask features: shapes, batched forward == per-mask loop, masking semantics, text features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.engine.ranking_fixtures import (
    box_masks,
    build_tiny_resnet_clip,
    build_tiny_vit_clip,
    random_rgb,
    single_torch_thread,
    tokenizer,
)
from workers.engine.blocks.clip.config import ClipFeatureConfig
from workers.engine.blocks.clip.features import ClipFeatureExtractor
from workers.engine.blocks.geometry import freesolo_box_xyxy, tight_box_xyxy
from workers.engine.core.errors import BadInputError, ConfigError
from workers.engine.core.meter import Meter

pytestmark = pytest.mark.usefixtures("single_torch_thread")
_ = single_torch_thread  # imported for pytest

BOXES = [
    (0, 0, 20, 16),
    (10, 8, 50, 40),
    (30, 0, 64, 48),
    (5, 20, 25, 47),
    (0, 0, 64, 48),
    (40, 30, 41, 31),
    (2, 2, 60, 10),
]


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    return build_tiny_vit_clip(seed=1)


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    return build_tiny_resnet_clip(seed=2)


def extractor(model: torch.nn.Module, **settings: object) -> ClipFeatureExtractor:
    return ClipFeatureExtractor(
        model, tokenizer(), model_name="tiny", settings=ClipFeatureConfig(**settings), meter=Meter()
    )


@pytest.mark.parametrize("preprocessing", ["reference", "clean"])
@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_batched_forward_equals_per_mask_loop(
    arch: str, preprocessing: str, vit: torch.nn.Module, resnet: torch.nn.Module
) -> None:
    model = vit if arch == "vit" else resnet
    ex = extractor(model, preprocessing=preprocessing, max_masks_per_forward=3)
    rgb = random_rgb(48, 64, seed=3)
    masks = box_masks(48, 64, BOXES)
    prepared = ex.prepare_image(rgb)

    batched_global = ex.global_features(prepared, masks)
    looped_global = ex.global_features_per_mask(prepared, masks)
    batched_local = ex.local_features(prepared, masks)
    looped_local = ex.local_features_per_mask(prepared, masks)

    assert batched_global.shape == (len(BOXES), 32) and batched_local.shape == (len(BOXES), 32)
    assert batched_global.dtype == torch.float32
    torch.testing.assert_close(batched_global, looped_global, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched_local, looped_local, atol=1e-5, rtol=0)
    # Different masks give different features, well beyond the tolerance (the masking reaches the output).
    assert (batched_global[0] - batched_global[1]).abs().max() > 1e-4
    assert (batched_local[0] - batched_local[1]).abs().max() > 1e-4


def test_chunking_does_not_change_features(vit: torch.nn.Module) -> None:
    rgb = random_rgb(seed=4)
    masks = box_masks(48, 64, BOXES)
    one = extractor(vit, max_masks_per_forward=1)
    many = extractor(vit, max_masks_per_forward=64)
    by_memory = extractor(vit, max_masks_per_forward=64, max_forward_mb=0.5)
    assert by_memory.chunk_size() < 64
    prepared = one.prepare_image(rgb)
    reference = many.global_features(prepared, masks)
    torch.testing.assert_close(one.global_features(prepared, masks), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(by_memory.global_features(prepared, masks), reference, atol=1e-5, rtol=0)


def test_batched_forward_runs_the_unmasked_blocks_once(vit: torch.nn.Module) -> None:
    ex = extractor(vit, max_masks_per_forward=4)
    prepared = ex.prepare_image(random_rgb())
    masks = box_masks(48, 64, BOXES)
    calls = {"n": 0}
    first = ex.visual.transformer.resblocks[0]
    handle = first.register_forward_hook(lambda *args: calls.__setitem__("n", calls["n"] + 1))
    try:
        ex.global_features(prepared, masks)
        assert calls["n"] == 1
        ex.global_features_per_mask(prepared, masks)
        assert calls["n"] == 1 + len(BOXES)
    finally:
        handle.remove()


def test_full_mask_global_feature_equals_the_plain_image_feature(vit: torch.nn.Module) -> None:
    """A mask covering everything multiplies patch tokens by 1: the output is CLIP's own image feature."""
    ex = extractor(vit)
    prepared = ex.prepare_image(random_rgb(seed=5))
    full = torch.ones((1, 48, 64), dtype=torch.bool)
    with torch.no_grad():
        plain = vit.encode_image(prepared.global_input)
    torch.testing.assert_close(ex.global_features(prepared, full), plain, atol=1e-5, rtol=0)


def test_mask_from_block_scales_with_depth_and_is_configurable() -> None:
    assert extractor(build_tiny_vit_clip(layers=4)).mask_from_block == 3
    assert extractor(build_tiny_vit_clip(layers=12)).mask_from_block == 9
    assert extractor(build_tiny_vit_clip(layers=2)).mask_from_block == 1
    assert extractor(build_tiny_vit_clip(layers=4), mask_from_block=0).mask_from_block == 0
    assert extractor(build_tiny_vit_clip(layers=4), mask_from_block=48).mask_from_block == 3


def test_earlier_masking_changes_the_feature(vit: torch.nn.Module) -> None:
    rgb = random_rgb(seed=6)
    masks = box_masks(48, 64, BOXES[:2])
    late = extractor(vit, mask_from_block=3)
    early = extractor(vit, mask_from_block=0)
    prepared = late.prepare_image(rgb)
    assert (late.global_features(prepared, masks) - early.global_features(prepared, masks)).abs().max() > 1e-4


def test_reference_preprocessing_uses_800_shorter_side_and_imagenet_stats(vit: torch.nn.Module) -> None:
    ex = extractor(vit, preprocessing="reference")
    rgb = np.full((40, 80, 3), 255, dtype=np.uint8)
    prepared = ex.prepare_image(rgb)
    assert prepared.global_input.shape == (1, 3, 64, 64)
    assert prepared.local_source.shape == (3, 40, 80)
    expected = (1.0 - 0.485) / 0.229  # white through ImageNet normalisation, red channel
    assert prepared.global_input[0, 0].mean().item() == pytest.approx(expected, abs=1e-4)


def test_local_crop_background_reference_quirk_and_black(vit: torch.nn.Module) -> None:
    rgb = random_rgb(seed=7)
    masks = box_masks(48, 64, [(0, 0, 64, 48)])
    masks[0, :, 32:] = False  # left half only; the crop box is the left half
    masks[0, 0:10, 0:10] = False  # a hole inside the box shows the background
    quirk = extractor(vit, preprocessing="reference", local_background="mean")
    crop = quirk.local_crops(quirk.prepare_image(rgb), masks)[0]
    # the top-left corner is outside the mask: the ImageNet mean *values* in normalised space
    torch.testing.assert_close(crop[:, 0, 0], torch.tensor([0.485, 0.456, 0.406]), atol=1e-4, rtol=0)
    black = extractor(vit, preprocessing="clean", local_background="black")
    crop = black.local_crops(black.prepare_image(rgb), masks)[0]
    expected_black = -torch.tensor(black.mean) / torch.tensor(black.std)
    torch.testing.assert_close(crop[:, 0, 0], expected_black, atol=1e-3, rtol=0)


def test_freesolo_and_tight_boxes() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:10, 4:14] = True
    assert tight_box_xyxy(mask) == (4, 5, 14, 10)
    # centre 7 +- 2.5 rows -> 4.5..9.5 -> (4, 9); centre 8.5 +- 5 cols -> 3.5..13.5 -> (3, 13)
    assert freesolo_box_xyxy(mask) == (3, 4, 13, 9)
    assert freesolo_box_xyxy(np.zeros((4, 5), dtype=bool)) == (0, 0, 5, 4)


def test_zero_masks_give_empty_features(vit: torch.nn.Module) -> None:
    ex = extractor(vit)
    features = ex.visual_features(random_rgb(), torch.zeros((0, 48, 64), dtype=torch.bool))
    assert features["global"].shape == (0, 32) and features["local"].shape == (0, 32)


def test_bad_inputs_are_refused_in_words(vit: torch.nn.Module) -> None:
    ex = extractor(vit)
    with pytest.raises(BadInputError, match="H x W x 3 uint8"):
        ex.prepare_image(np.zeros((4, 4), dtype=np.uint8))
    prepared = ex.prepare_image(random_rgb())
    with pytest.raises(BadInputError, match="N x H x W"):
        ex.global_features(prepared, torch.zeros((2, 10, 10), dtype=torch.bool))
    with pytest.raises(ConfigError, match="preprocessing"):
        ClipFeatureConfig(preprocessing="fancy")
    with pytest.raises(ConfigError, match="max_masks_per_forward"):
        ClipFeatureConfig(max_masks_per_forward=0)


def test_text_features_mix_sentence_and_phrase_and_truncate_long_text(vit: torch.nn.Module) -> None:
    ex = extractor(vit)
    sentence, phrase = ex.encode_texts(["the man on the left", "the man"])
    mixed = ex.text_features(["the man on the left"], ["the man"], sentence_weight=0.3, phrase_weight=0.7)
    torch.testing.assert_close(mixed[0], 0.3 * sentence + 0.7 * phrase, atol=1e-6, rtol=0)
    long = ex.text_features(["a very long expression " * 400], ["expression"])
    assert long.shape == (1, 32) and torch.isfinite(long).all()


def test_text_features_are_cached_per_process(vit: torch.nn.Module) -> None:
    ex = extractor(vit)
    ex.encode_texts(["blue car", "red car"])
    ex.encode_texts(["red car", "blue car", "red car"])
    assert ex.meter.calls("tiny:text") == 1
    ex.encode_texts(["green car"])
    assert ex.meter.calls("tiny:text") == 2
