"""Tiny generative stand-ins: each writes a real save_pretrained folder that loads through from_pretrained.

Wiring only: the models have random weights, so the tests check formats, shapes, caps and tokenisation,
never what the text or the attention says.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workers.engine.core.errors import ConfigError, ModelStoreError
from workers.engine.store.loaders.diffusers import DiffusionBundle, load_diffusion
from workers.engine.store.loaders.folders import resolve_dtype
from workers.engine.store.loaders.transformers import CaptionerBundle, MllmBundle, load_captioner, load_mllm
from workers.engine.store.tiny.generative import (
    clip_bpe_vocab_and_merges,
    write_tiny_captioner,
    write_tiny_diffusion,
    write_tiny_mllm,
)

# Sentences with words CLIP's BPE splits into several tokens (hippopotamus, skateboarder, ...).
CLIP_SENTENCES = [
    "the man in the white shirt on the left",
    "An unbelievably tiny hippopotamus, partially hidden!",
    "skateboarder's zebra-striped refrigerator   near the photobombing giraffes",
    "second from the right: the kid holding a frisbee",
    "3 donuts & 2 coffees (upper-left corner)",
]


def _photo(height: int = 96, width: int = 128, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def tiny_captioner(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("captioner_tiny")
    return dest, write_tiny_captioner(dest, seed=0)


@pytest.fixture(scope="session")
def tiny_mllm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("mllm_tiny")
    return dest, write_tiny_mllm(dest, seed=0)


@pytest.fixture(scope="session")
def tiny_diffusion(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("sd_tiny")
    return dest, write_tiny_diffusion(dest, seed=0)


@pytest.fixture(scope="session")
def diffusion_bundle(tiny_diffusion: tuple[Path, dict]) -> DiffusionBundle:
    return load_diffusion(tiny_diffusion[0], "cpu")


# --- captioner -------------------------------------------------------------------------------------------


def test_captioner_folder_loads_with_the_blip2_classes(tiny_captioner: tuple[Path, dict]) -> None:
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    folder, arch = tiny_captioner
    assert arch["model_class"] == "Blip2ForConditionalGeneration"
    json.dumps(arch)  # the manifest stores it as JSON
    processor = Blip2Processor.from_pretrained(folder, local_files_only=True)
    model = Blip2ForConditionalGeneration.from_pretrained(folder, local_files_only=True)
    assert model.config.num_query_tokens == arch["num_query_tokens"] == processor.num_query_tokens
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert model.config.vision_config.hidden_size == arch["vision"]["hidden_size"]
    # OPT's special-token layout: BOS = EOS = </s> (2), <pad> = 1, BOS prepended to text.
    tokenizer = processor.tokenizer
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (2, 2, 1)
    assert tokenizer("a man on the left").input_ids[0] == 2
    assert model.config.text_config.eos_token_id == tokenizer.eos_token_id


def test_captioner_generates_a_string_per_image(tiny_captioner: tuple[Path, dict]) -> None:
    bundle = load_captioner(tiny_captioner[0], "cpu")
    assert isinstance(bundle, CaptionerBundle)
    assert bundle.dtype == torch.float32 and bundle.model.dtype == torch.float32
    inputs = bundle.processor(images=[_photo(seed=1), _photo(64, 64, seed=2)], return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 224, 224)
    with torch.inference_mode():
        ids = bundle.model.generate(**inputs, max_new_tokens=6, min_new_tokens=2, do_sample=False)
    captions = bundle.processor.batch_decode(ids, skip_special_tokens=True)
    assert len(captions) == 2
    assert all(isinstance(c, str) and c.strip() for c in captions)
    assert "<image>" not in captions[0]


def test_captioner_prompt_keeps_query_tokens_in_front(tiny_captioner: tuple[Path, dict]) -> None:
    folder, arch = tiny_captioner
    bundle = load_captioner(folder, "cpu")
    inputs = bundle.processor(images=_photo(), text="a photo of", return_tensors="pt")
    n = arch["num_query_tokens"]
    assert inputs["input_ids"][0, :n].tolist() == [arch["image_token_id"]] * n
    assert inputs["input_ids"][0, n].item() == bundle.processor.tokenizer.bos_token_id


# --- multimodal LLM --------------------------------------------------------------------------------------


def test_mllm_chat_template_and_image_token_count(tiny_mllm: tuple[Path, dict]) -> None:
    from transformers import LlavaForConditionalGeneration

    folder, arch = tiny_mllm
    bundle = load_mllm(folder, "cpu")
    assert isinstance(bundle, MllmBundle)
    assert isinstance(bundle.model, LlavaForConditionalGeneration)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who is on the left?"}]}
    ]
    prompt = bundle.processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "USER: <image>\nWho is on the left? ASSISTANT:"
    inputs = bundle.processor(images=_photo(), text=prompt, return_tensors="pt")
    n_image_tokens = int((inputs["input_ids"] == bundle.model.config.image_token_id).sum())
    assert n_image_tokens == arch["image_seq_length"] == bundle.model.config.image_seq_length == 64
    assert inputs["pixel_values"].shape == (1, 3, arch["image_size"], arch["image_size"])
    # The model's vision features must fill exactly those tokens (it raises on a mismatch).
    with torch.inference_mode():
        logits = bundle.model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], arch["text"]["vocab_size"])


@pytest.mark.parametrize("cap", [1, 4])
def test_mllm_batched_greedy_generation_respects_the_cap(tiny_mllm: tuple[Path, dict], cap: int) -> None:
    bundle = load_mllm(tiny_mllm[0], "cpu")
    prompts = [
        bundle.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
            add_generation_prompt=True,
        )
        for text in ("Describe the man in the white shirt.", "What surrounds the dog?")
    ]
    inputs = bundle.processor(
        images=[_photo(seed=3), _photo(seed=4)], text=prompts, return_tensors="pt", padding=True
    )
    assert inputs["attention_mask"][:, -1].all(), "left padding keeps every prompt's end aligned"
    with torch.inference_mode():
        out = bundle.model.generate(**inputs, max_new_tokens=cap, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    assert 1 <= new.shape[1] <= cap
    texts = bundle.processor.batch_decode(new, skip_special_tokens=True)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_mllm_chat_template_tokenizes_with_the_image(tiny_mllm: tuple[Path, dict]) -> None:
    bundle = load_mllm(tiny_mllm[0], "cpu")
    messages = [
        {"role": "user", "content": [{"type": "image", "image": _photo()}, {"type": "text", "text": "hi"}]}
    ]
    inputs = bundle.processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert int((inputs["input_ids"] == bundle.model.config.image_token_id).sum()) == 64
    assert inputs["pixel_values"].shape[0] == 1


def test_same_seed_writes_identical_files(tiny_mllm: tuple[Path, dict], tmp_path: Path) -> None:
    """The manifest's sha256 of a tiny model must not change when make-tiny runs again."""
    import hashlib

    def digests(root: Path) -> dict[str, str]:
        return {
            str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*"))
            if path.is_file()
        }

    folder, arch = tiny_mllm
    assert write_tiny_mllm(tmp_path / "again", seed=0) == arch
    assert digests(tmp_path / "again") == digests(folder)
    write_tiny_mllm(tmp_path / "other", seed=1)
    assert digests(tmp_path / "other")["model.safetensors"] != digests(folder)["model.safetensors"]


# --- diffusion -------------------------------------------------------------------------------------------


def test_diffusion_folder_has_the_sd15_layout(tiny_diffusion: tuple[Path, dict]) -> None:
    from diffusers import StableDiffusionPipeline

    folder, arch = tiny_diffusion
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert index["safety_checker"] == [None, None]
    assert sorted(p.name for p in (folder / "tokenizer").iterdir()) == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, local_files_only=True)
    assert pipe.unet.config.sample_size == arch["image_size"] // arch["vae_scale_factor"] == 32
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.scheduler.config.beta_end == pytest.approx(0.012)
    assert pipe.vae.config.scaling_factor == pytest.approx(0.18215)


def test_diffusion_one_ddim_img2img_step_and_cross_attention_resolutions(
    tiny_diffusion: tuple[Path, dict], diffusion_bundle: DiffusionBundle
) -> None:
    arch = tiny_diffusion[1]
    bundle = diffusion_bundle
    assert bundle.dtype == torch.float32 and bundle.vae_scale_factor == 8
    size = arch["image_size"]
    image = torch.from_numpy(np.array(_photo(size, size, seed=5))).permute(2, 0, 1)[None].float()
    image = image / 127.5 - 1.0  # 1 x 3 x 256 x 256 in [-1, 1]

    texts = ["", "the hippopotamus on the left"]  # unconditional first, as classifier-free guidance wants
    tokens = bundle.tokenizer(
        texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    seen: list[tuple[str, int, int]] = []

    def record(name: str):
        def hook(module, args, kwargs, output) -> None:
            queries = args[0] if args else kwargs["hidden_states"]
            seen.append((name, int(round(queries.shape[1] ** 0.5)), kwargs["encoder_hidden_states"].shape[1]))

        return hook

    handles = [
        module.register_forward_hook(record(name), with_kwargs=True)
        for name, module in bundle.unet.named_modules()
        if name.endswith("attn2")
    ]
    try:
        with torch.inference_mode():
            text_embeddings = bundle.text_encoder(tokens.input_ids)[0]
            latents = bundle.vae.encode(image).latent_dist.mean * bundle.vae.config.scaling_factor
            assert latents.shape == (1, 4, size // 8, size // 8)
            scheduler = bundle.scheduler
            scheduler.set_timesteps(20)
            start = int(20 * 0.1)  # strength 0.1: noise to step 2 of 20
            timestep = scheduler.timesteps[-start]
            noisy = scheduler.add_noise(latents, torch.randn_like(latents), timestep[None])
            noise = bundle.unet(
                torch.cat([noisy] * 2), timestep, encoder_hidden_states=text_embeddings
            ).sample
            uncond, cond = noise.chunk(2)
            guided = uncond + 9.0 * (cond - uncond)
            stepped = scheduler.step(guided, timestep, noisy).prev_sample
    finally:
        for handle in handles:
            handle.remove()
    assert stepped.shape == latents.shape and torch.isfinite(stepped).all()
    assert not torch.equal(stepped, noisy)
    resolutions = sorted(res for _, res, _ in seen)
    # down 32, 16; mid 8; up 16, 16, 32, 32 (one more layer per up block, as in SD)
    assert resolutions == [8, 16, 16, 16, 32, 32, 32]
    assert sorted(set(resolutions), reverse=True) == arch["cross_attention_resolutions"]
    assert all(keys == 77 for _, _, keys in seen)


def test_clip_bpe_tokenizer_matches_open_clip(diffusion_bundle: DiffusionBundle) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    tokenizer = diffusion_bundle.tokenizer
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)
    for sentence in CLIP_SENTENCES:
        assert tokenizer(sentence).input_ids == [49406, *reference.encode(sentence), 49407], sentence
    pieces = tokenizer.tokenize("hippopotamus")
    assert len(pieces) > 1 and pieces[-1].endswith("</w>")
    assert len(reference.encode("hippopotamus")) == len(pieces)


def test_clip_bpe_vocab_is_formed_like_clips() -> None:
    vocab, merges = clip_bpe_vocab_and_merges()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    first_merge = "".join(merges[0].split())
    assert vocab[first_merge] == 512


# --- loader errors ---------------------------------------------------------------------------------------


def test_loaders_name_a_missing_folder_and_the_command(tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match=r"does not exist.*models (fetch|make-tiny)"):
        load_captioner(tmp_path / "absent", "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelStoreError, match="no model_index.json"):
        load_diffusion(tmp_path / "empty", "cpu")
    with pytest.raises(ModelStoreError, match="no config.json"):
        load_mllm(tmp_path / "empty", "cpu")


def test_precision_defaults_and_bad_names() -> None:
    assert resolve_dtype(torch.device("cpu"), None) == torch.float32
    assert resolve_dtype(torch.device("cuda"), None) == torch.float16
    assert resolve_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ConfigError, match="float8"):
        resolve_dtype(torch.device("cpu"), "float8")
