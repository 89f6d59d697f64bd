"""The automatic mask generator never raises on a legal setting (issue 15, kind 6).

A property test over generator settings without hypothesis (not in the locks): a seeded grid of random
``AmgConfig`` draws inside the documented bounds (small point grids, so it runs on a CPU), crossed with small
awkward images (blank, noise, a single colour, 1 x 1, very wide, very tall). Each call must return
``Proposals`` of the image's size, possibly empty, never an exception.

The generator is a parameter (``GENERATORS``): a faster generator that replaces the stock call adds itself
there and is held to the same property. The model is a real segment-anything ``Sam`` with random weights and
a 64-pixel input (the tiny stand-in's architecture, smaller), so every stock code path runs in milliseconds.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
import torch

from workers.engine.blocks.masks import Proposals
from workers.engine.blocks.proposals.amg import generate_proposals, stock_proposals
from workers.engine.blocks.proposals.config import AmgConfig
from workers.engine.core.errors import ConfigError
from workers.engine.store.loaders.sam import SAM_TINY_ARCH, build_sam_tiny

GENERATORS: list[Callable[..., Proposals]] = [
    generate_proposals,
    stock_proposals,
]  # ours (fast) and the stock one

IMAGES: dict[str, np.ndarray] = {
    "blank": np.zeros((24, 32, 3), dtype=np.uint8),
    "noise": np.random.default_rng(0).integers(0, 256, (40, 36, 3), dtype=np.uint8),
    "one_colour": np.full((20, 20, 3), (200, 30, 30), dtype=np.uint8),
    "one_pixel": np.full((1, 1, 3), 128, dtype=np.uint8),
    "very_wide": np.random.default_rng(1).integers(0, 256, (3, 200, 3), dtype=np.uint8),
    "very_tall": np.zeros((150, 2, 3), dtype=np.uint8),
}


def _draw(rng: random.Random) -> AmgConfig:
    """A random legal config: inside AmgConfig's bounds and rules (point grids kept small for the CPU)."""
    while True:
        try:
            return _draw_once(rng)
        except ConfigError:  # e.g. a crop layer left with no grid point: refused at the door, draw again
            continue


def _draw_once(rng: random.Random) -> AmgConfig:
    return AmgConfig(
        points_per_side=rng.randint(1, 4),
        points_per_batch=rng.choice([3, 64]),
        pred_iou_thresh=rng.choice([0.0, 1.0, rng.random()]),
        stability_score_thresh=rng.choice([0.0, 1.0, rng.random()]),
        stability_score_offset=rng.choice([0.0, 1.0, rng.uniform(0, 10)]),
        box_nms_thresh=rng.choice([0.0, 1.0, rng.random()]),
        crop_n_layers=rng.randint(0, 1),  # two layers (21 crops) have their own test below
        crop_nms_thresh=rng.choice([0.0, 1.0, rng.random()]),
        crop_overlap_ratio=rng.choice([0.0, 0.99, rng.uniform(0, 0.99)]),
        crop_n_points_downscale_factor=rng.randint(1, 16),
        min_mask_region_area=rng.choice([0, 1, 50, 1_000_000]),
    )


CONFIGS = [_draw(random.Random(seed)) for seed in range(10)] + [
    # the cases of the issue: crops where nothing survives, the same without crops
    AmgConfig(points_per_side=4, crop_n_layers=1, pred_iou_thresh=1.0, stability_score_thresh=1.0),
    AmgConfig(points_per_side=4, crop_n_layers=0, pred_iou_thresh=1.0, stability_score_thresh=1.0),
    # one point per decoder batch, every mask kept and cleaned up
    AmgConfig(
        points_per_side=2,
        points_per_batch=1,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        min_mask_region_area=1_000_000,
    ),
]


@pytest.fixture(scope="module")
def micro_sam() -> torch.nn.Module:
    torch.manual_seed(0)
    arch = {**SAM_TINY_ARCH, "image_size": 64, "window_size": 2, "encoder_embed_dim": 16}
    return build_sam_tiny(arch).eval()


@pytest.mark.parametrize("generate", GENERATORS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("config", CONFIGS, ids=[f"config{i}" for i in range(len(CONFIGS))])
def test_any_legal_setting_gives_masks_or_none_never_an_error(
    micro_sam: torch.nn.Module, generate: Callable[..., Proposals], config: AmgConfig
) -> None:
    for name, rgb in IMAGES.items():
        proposals = generate(micro_sam, rgb, config)
        assert isinstance(proposals, Proposals), name
        assert proposals.image_size == rgb.shape[:2], name
        assert all(r["size"] == list(rgb.shape[:2]) for r in proposals.rles), name


@pytest.mark.parametrize("generate", GENERATORS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("survive", [0.0, 1.0])
def test_two_crop_layers_on_the_smallest_images(micro_sam: torch.nn.Module, generate, survive: float) -> None:
    # 1 + 4 + 16 crops; on a 1 x 1 image most of them are empty (skipped, not embedded)
    config = AmgConfig(
        points_per_side=2, crop_n_layers=2, pred_iou_thresh=survive, stability_score_thresh=survive
    )
    for name in ("one_pixel", "very_wide"):
        proposals = generate(micro_sam, IMAGES[name], config)
        assert proposals.image_size == IMAGES[name].shape[:2], name


@pytest.mark.parametrize("generate", GENERATORS, ids=lambda f: f.__name__)
def test_crops_where_nothing_survives_give_no_mask(micro_sam: torch.nn.Module, generate) -> None:
    # stock SamAutomaticMaskGenerator raised IndexError (box_area of an empty tensor) here
    config = AmgConfig(points_per_side=4, crop_n_layers=1, pred_iou_thresh=1.0, stability_score_thresh=1.0)
    assert len(generate(micro_sam, IMAGES["blank"], config)) == 0


@pytest.mark.parametrize("generate", GENERATORS, ids=lambda f: f.__name__)
def test_crops_keep_masks_when_some_survive(micro_sam: torch.nn.Module, generate) -> None:
    config = AmgConfig(points_per_side=3, crop_n_layers=1, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    proposals = generate(micro_sam, IMAGES["noise"], config)
    assert len(proposals) > 0


def test_a_crop_layer_without_grid_points_is_refused_at_the_door() -> None:
    # segment-anything divides by zero building that layer's grid
    with pytest.raises(ConfigError, match="crop layer 2 would get 4 // 4\\*\\*2 = 0 points per side"):
        AmgConfig(points_per_side=4, crop_n_layers=2, crop_n_points_downscale_factor=4)


def test_work_estimate_counts_embeddings_and_prompts() -> None:
    work = AmgConfig(
        points_per_side=32, points_per_batch=64, crop_n_layers=1, crop_n_points_downscale_factor=2
    ).work()
    assert work == {"embeddings": 5, "prompts": 32 * 32 + 4 * 16 * 16, "decoder_batches": 16 + 4 * 4}
