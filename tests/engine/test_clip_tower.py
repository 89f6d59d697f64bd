"""The one CLIP tower adapter: its pieces put back together are open_clip's own image encoder."""

from __future__ import annotations

import pytest
import torch

from tests.engine.ranking_fixtures import build_tiny_vit_clip
from workers.engine.blocks.clip.tower import ClipTower
from workers.engine.core.errors import ConfigError


@pytest.fixture(scope="module")
def model():
    return build_tiny_vit_clip(seed=3, image_size=64, patch_size=16, layers=4)


def test_embed_blocks_head_equal_encode_image(model) -> None:
    tower = ClipTower(model.visual, model_name="tiny")
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = tower.head(tower.blocks(tower.embed(images))[:, 0])
        theirs = model.encode_image(images)
    assert ours.shape == (3, tower.output_dim) and torch.allclose(ours, theirs, atol=1e-5)


def test_blocks_run_in_pieces_and_unit_weights_change_nothing(model) -> None:
    tower = ClipTower(model.visual, model_name="tiny")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = tower.blocks(tower.embed(images))
        split = tower.blocks(tower.blocks(tower.embed(images), 0, 2), 2)
        weighted = tower.blocks(tower.embed(images), token_weights=torch.ones(2, 16))
        zeroed = tower.blocks(tower.embed(images), 3, token_weights=torch.zeros(2, 16))
    assert torch.allclose(whole, split, atol=1e-6) and torch.allclose(whole, weighted, atol=1e-6)
    assert not torch.allclose(
        whole[:, 0], zeroed[:, 0], atol=1e-3
    )  # masking every patch changes the class token


def test_positional_embedding_is_resized_for_other_grids(model) -> None:
    tower = ClipTower(model.visual, model_name="tiny")
    assert tower.positional((4, 4)) is model.visual.positional_embedding
    resized = tower.positional((3, 6))
    assert resized.shape == (1 + 18, tower.width)
    assert torch.equal(resized[0], model.visual.positional_embedding[0])  # the class position is kept
    patches, cls, grid = tower.patch_tokens(torch.zeros(1, 3, 48, 96))
    assert grid == (3, 6) and patches.shape == (1, 18, tower.width) and cls.shape == (tower.width,)


def test_only_vits_with_a_class_token() -> None:
    with pytest.raises(ConfigError, match="not a ViT"):
        ClipTower(torch.nn.Linear(2, 2), model_name="resnet")
