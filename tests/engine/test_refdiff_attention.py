"""Cross-attention capture on the tiny random SD model, and the subject token's CLIP BPE position.

Wiring only: the UNet has random weights, so these tests check shapes, keys, the processor swap, the
equivalence of the capturing processor with the default one, and tokenisation, never what the maps show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.engine.blocks.geometry import SquareGeometry, pad_square
from workers.engine.blocks.text import parse_expression
from workers.engine.core.errors import ConfigError
from workers.engine.hub import ModelHub
from workers.engine.methods.refdiff.attention import (
    AttentionStore,
    CapturingCrossAttnProcessor,
    capture_cross_attention,
    choose_resolution,
    cross_attention_layers,
    select_layers,
    subject_attention_map,
    subject_char_end,
    subject_token_index,
    subject_token_index_peer,
)
from workers.engine.methods.refdiff.config import NoisingConfig
from workers.engine.methods.refdiff.noising import (
    attention_to_image,
    denoise_with_capture,
    encode_latents,
    new_scheduler,
    schedule,
)
from workers.engine.store.manifest import ModelStore

# 128 px -> a 16 x 16 latent: cross-attention at 16 (down 0, up 2 x2), 8 (down 1, up 1 x2) and 4 (mid).
SETTINGS = NoisingConfig(image_size=128, steps=10, strength=0.2)  # two UNet steps


@pytest.fixture(scope="module")
def sd(model_store: ModelStore):
    hub = ModelHub(model_store, device="cpu", memory_budget_mb=2048)
    yield hub.get("sd_tiny")
    hub.clear()


@pytest.fixture(scope="module")
def tokenizer(model_store: ModelStore):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(
        Path(model_store.path("sd_tiny")) / "tokenizer", local_files_only=True
    )


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def captured(sd, rgb):
    latent = encode_latents(sd, rgb, SETTINGS)
    layers = select_layers(sd.unet, 16, 16)
    store = AttentionStore(layers, kinds=("logits", "probs"))
    before = dict(sd.unet.attn_processors)
    final = denoise_with_capture(sd, latent, ["a red car on the left", "the skateboarder"], SETTINGS, store)
    return store, layers, latent, final, before


def test_layers_and_resolutions_of_the_tiny_unet(sd) -> None:
    layers = cross_attention_layers(sd.unet, 16)
    sides = {name: side for name, (_, side) in layers.items()}
    assert sides["down_blocks.0.attentions.0.transformer_blocks.0.attn2"] == 16
    assert sides["down_blocks.1.attentions.0.transformer_blocks.0.attn2"] == 8
    assert sides["mid_block.attentions.0.transformer_blocks.0.attn2"] == 4
    assert sides["up_blocks.2.attentions.1.transformer_blocks.0.attn2"] == 16
    assert all(name.endswith("attn2") for name in layers)
    assert set(select_layers(sd.unet, 16, 16, ("up",))) == {
        "up_blocks.2.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.2.attentions.1.transformer_blocks.0.attn2",
    }
    with pytest.raises(ConfigError, match="no cross-attention layer at a 5x5"):
        select_layers(sd.unet, 16, 5)


def test_resolution_choice_works_at_both_scales() -> None:
    # SD 1.5 at 1024 px has grids 128, 64, 32, 16: the paper's 32 is there.
    assert choose_resolution([128, 64, 32, 16], 1024 // 32) == 32
    # The tiny model at 256 px has 32, 16, 8: 256 // 32 = 8 is there; at 128 px, 4 is the mid block.
    assert choose_resolution([32, 16, 8], 256 // 32) == 8
    assert choose_resolution([16, 8, 4], 128 // 32) == 4
    assert choose_resolution([16, 8, 4], 3) == 4  # snapped to the nearest on a log scale
    with pytest.raises(ConfigError):
        choose_resolution([], 8)


def test_capture_records_every_layer_and_step_with_the_expected_shape(captured) -> None:
    store, layers, _, final, _ = captured
    assert len(layers) == 3
    assert store.steps() == [0, 1]
    for kind in ("logits", "probs"):
        shapes = store.shapes(kind)
        assert set(shapes) == {(layer, step) for layer in layers for step in (0, 1)}
        # 2 expressions x (unconditional, conditional) rows, 16 x 16 queries, 77 text tokens.
        assert all(shape == (4, 256, 77) for shape in shapes.values())
    assert store.skipped == 0
    probs = store.maps[(next(iter(layers)), 0, "probs")]
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, 256))
    assert final.shape == (2, 4, 16, 16)


def test_processors_are_restored_after_capture(sd, captured) -> None:
    _, _, _, _, before = captured
    after = sd.unet.attn_processors
    assert set(after) == set(before)
    assert all(after[name] is before[name] for name in before)
    assert not any(isinstance(p, CapturingCrossAttnProcessor) for p in after.values())


def test_capturing_processor_returns_what_the_default_one_does(sd) -> None:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 16, 16, generator=generator)
    text = torch.randn(2, 77, sd.text_encoder.config.hidden_size, generator=generator)
    with torch.inference_mode():
        plain = sd.unet(sample, 51, encoder_hidden_states=text).sample
        store = AttentionStore(select_layers(sd.unet, 16, 16))
        with capture_cross_attention(sd.unet, store):
            captured = sd.unet(sample, 51, encoder_hidden_states=text).sample
    assert len(store.maps) == 3
    torch.testing.assert_close(captured, plain, rtol=1e-4, atol=1e-5)


def test_subject_map_combines_guidance_and_takes_the_subject_column() -> None:
    layer = "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    store = AttentionStore({layer: 2})
    uncond = torch.zeros(1, 4, 77)
    cond = torch.zeros(1, 4, 77)
    cond[0, :, 5] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    uncond[0, :, 5] = torch.tensor([3.0, 0.0, 0.0, 0.0])  # u + 9 (c - u) = [-24, 9, 18, 27]
    store.record(layer, "logits", torch.cat([uncond, cond]))
    result = subject_attention_map(store, [5], guidance_scale=9.0)
    expected = torch.tensor([[-24.0, 9.0], [18.0, 27.0]])
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    torch.testing.assert_close(result[0], expected, atol=1e-6, rtol=0)


def test_the_map_comes_back_to_the_image_without_the_padding() -> None:
    rgb = np.zeros((2, 4, 3), dtype=np.uint8)
    square, geometry = pad_square(rgb, 7)
    assert square.shape == (4, 4, 3) and (geometry.top, geometry.left) == (1, 0)
    assert (square[0] == 7).all() and (square[1:3] == 0).all()
    grid = torch.tensor([[0.0, 0.0], [1.0, 5.0]])  # the bottom half of the square holds the image's values
    image_map = attention_to_image(grid, SquareGeometry(30, 60))
    assert image_map.shape == (30, 60)
    assert float(image_map.min()) == 0.0 and abs(float(image_map.max()) - 1.0) < 1e-6


def test_schedule_runs_strength_times_steps_and_the_peer_noise_offset(sd) -> None:
    noise_t, timesteps = schedule(new_scheduler(sd), NoisingConfig(image_size=128))
    assert timesteps == [51, 1] and noise_t == 51
    noise_t, timesteps = schedule(new_scheduler(sd), NoisingConfig(image_size=128, peer_noise_level=True))
    assert timesteps == [51, 1] and noise_t == 101
    with pytest.raises(ConfigError, match="runs no denoising step"):
        NoisingConfig(steps=20, strength=0.01)


# -- subject token ---------------------------------------------------------------------------------


def _index(tokenizer, text: str) -> int:
    parsed = parse_expression(text)
    end = subject_char_end(text, parsed.tokens, parsed.subject_index)
    return subject_token_index(tokenizer, text, end)


def test_subject_of_a_multi_token_word_maps_to_its_last_piece(tokenizer) -> None:
    text = "the skateboarder on the left"
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    assert pieces[2:4] == ["skate", "boarder</w>"]  # one word, two BPE tokens
    assert parse_expression(text).subject == "skateboarder"
    assert _index(tokenizer, text) == 3


def test_subject_index_follows_the_subject_not_an_earlier_substring(tokenizer) -> None:
    text = "a woman next to the man"
    assert parse_expression(text).subject == "woman"
    assert _index(tokenizer, text) == 2
    # Subject "man" (its end is the end of the sentence): ours points at the last word, while the code's
    # substring cut finds "man" inside "woman" first.
    assert subject_token_index(tokenizer, text, len(text)) == 6
    assert subject_token_index_peer(tokenizer, text, "man") == 2


def test_subject_index_with_capitals_punctuation_and_a_long_sentence(tokenizer) -> None:
    text = "Giraffes, eating leaves."
    parsed = parse_expression(text)
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    assert pieces[_index(tokenizer, text)].removesuffix("</w>") in parsed.subject
    long = "the " + "very " * 100 + "tall man"
    assert _index(tokenizer, long) == 75  # past the 77-token window: the last kept content token
