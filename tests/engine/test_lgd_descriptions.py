"""LGD's description generator on tiny random MLLMs: prompts, chat templates, token cap, cache, batching.

The tiny LLaVA-layout model is the store's ``mllm_tiny`` (loaded by the session hub through ``load_mllm``); a tiny Idefics3 (SmolVLM layout) built in memory by ``scripts/bench_lgd.py`` shows the
same code path serves a second chat-template family. Random models write noise: these tests check wiring.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from workers.engine.core.cache import FeatureCache, ImageContext
from workers.engine.core.errors import ConfigError
from workers.engine.core.meter import Meter
from workers.engine.core.types import ImageInput
from workers.engine.methods.lgd.config import GenerationConfig
from workers.engine.methods.lgd.descriptions import (
    DescriptionGenerator,
    DescriptionRequest,
    cached_descriptions,
    clean_description,
    join_prefix,
)
from workers.engine.methods.lgd.prompt_set import PromptSet, load_prompt_set
from workers.engine.store.loaders.transformers import MllmBundle

ROOT = Path(__file__).resolve().parents[2]


def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_lgd", ROOT / "scripts" / "bench_lgd.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


class SpyProcessor:
    """Delegates to a real processor and records the texts and image lists of every call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append({"text": list(kwargs.get("text") or []), "images": kwargs.get("images")})
        out = self.inner(*args, **kwargs)
        self.calls[-1]["input_ids"] = out["input_ids"].clone()
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class SpyModel:
    """Delegates to a real model; records the shapes going into and out of ``generate``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.generated: list[tuple[int, torch.Tensor]] = []

    def generate(self, **kwargs: Any) -> torch.Tensor:
        out = self.inner.generate(**kwargs)
        self.generated.append((kwargs["input_ids"].shape[1], out))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def tiny_mllm(model_hub: Any) -> MllmBundle:
    """The store's ``mllm_tiny`` as the hub loads it (``load_mllm`` on its verified folder)."""
    bundle = model_hub.get("mllm_tiny")
    assert isinstance(bundle, MllmBundle)
    return bundle


@pytest.fixture
def spied(tiny_mllm: MllmBundle) -> MllmBundle:
    return MllmBundle(
        model=SpyModel(tiny_mllm.model),
        processor=SpyProcessor(tiny_mllm.processor),
        device=tiny_mllm.device,
        dtype=tiny_mllm.dtype,
    )


def _rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def _ctx(cache: FeatureCache, meter: Meter, seed: int = 0) -> ImageContext:
    rgb = _rgb(seed)
    return ImageContext(ImageInput(rgb=rgb, sha256=hashlib.sha256(rgb.tobytes()).hexdigest()), cache, meter)


def _requests(expressions: list[str]) -> list[DescriptionRequest]:
    phrases = {
        "man in the white shirt on the left": "man",
        "red car": "red car",
        "dog under the table": "dog",
    }
    return [
        DescriptionRequest(e, phrases.get(e, e), kind)
        for e in expressions
        for kind in ("attribute", "surrounding")
    ]


# -- prompts as data --------------------------------------------------------------------------------


def test_default_prompt_set_has_both_kinds_a_version_and_the_paper_shape() -> None:
    prompts = load_prompt_set("lgd")
    assert prompts.version
    assert prompts.attribute.response_prefix == prompts.surrounding.response_prefix == "A photo of"
    assert "surrounded by" in prompts.surrounding.instruction
    rendered = prompts.attribute.render("man on the left", "man")
    assert '"man on the left"' in rendered and "{" not in rendered
    assert prompts.fallback_text("man on the left", "man") == "a photo of man"


def test_prompt_set_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_prompt_set("no_such_set")
    with pytest.raises(ConfigError, match="lower-case"):
        load_prompt_set("../etc/passwd")
    good = json.loads((ROOT / "workers/engine/methods/lgd/prompts/lgd.json").read_text())
    bad = {**good, "attribute": {"instruction": "Describe {object}."}}
    with pytest.raises(ConfigError, match=r"unknown placeholder \{object\}"):
        PromptSet.from_dict(bad, source="x.json")
    with pytest.raises(ConfigError, match="missing key 'version'"):
        PromptSet.from_dict({k: v for k, v in good.items() if k != "version"}, source="x.json")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  A photo of a man in a white shirt. He is smiling.", "A photo of a man in a white shirt"),
        ('"A photo of a dog\n on   a couch"', "A photo of a dog on a couch"),
        ("A photo of 3.5 apples! More text", "A photo of 3.5 apples!"),
        ("   \n ", ""),
        ("...", ""),
    ],
)
def test_clean_description_keeps_one_sentence(raw: str, clean: str) -> None:
    assert clean_description(raw) == clean


def test_join_prefix_spacing() -> None:
    assert join_prefix("A photo of", " a man") == "A photo of a man"
    assert join_prefix("A photo of", ", well") == "A photo of, well"
    assert join_prefix("", " a man ") == "a man"


# -- generation ------------------------------------------------------------------------------------


def test_both_prompts_are_built_with_the_chat_template_and_sent(spied: MllmBundle) -> None:
    prompts = load_prompt_set("lgd")
    generator = DescriptionGenerator(spied, "mllm_tiny", prompts, GenerationConfig(max_new_tokens=4), Meter())
    requests = _requests(["man in the white shirt on the left", "red car"])
    out = generator.generate(_rgb(), requests)

    assert len(out) == 4
    (call,) = spied.processor.calls
    texts = call["text"]
    assert len(texts) == 4 and len(call["images"]) == 4 and all(len(i) == 1 for i in call["images"])
    for text, request in zip(texts, requests, strict=True):
        instruction = prompts.template(request.kind).render(request.expression, request.noun_phrase)
        # LLaVA-1.5's template: "USER: <image>\n{instruction} ASSISTANT: A photo of" (response prefilled)
        assert text == f"USER: <image>\n{instruction} ASSISTANT: A photo of"
    # What reached the model: the decoded input ids hold each instruction, left-padded.
    decoded = spied.processor.tokenizer.batch_decode(call["input_ids"], skip_special_tokens=True)
    assert sum("Describe the objects around it" in d for d in decoded) == 2
    assert sum("key attributes" in d for d in decoded) == 2
    assert sum('"red car"' in d for d in decoded) == 2
    pad = spied.processor.tokenizer.pad_token_id
    lengths = (call["input_ids"] != pad).sum(dim=1)
    assert lengths.min() < lengths.max(), "prompts of different lengths"
    shortest = int(lengths.argmin())
    assert call["input_ids"][shortest, 0] == pad and call["input_ids"][shortest, -1] != pad  # left padding
    assert all(d.text.startswith("A photo of") or d.fallback for d in out)


def test_without_prefill_the_generation_prompt_is_used(spied: MllmBundle) -> None:
    settings = GenerationConfig(max_new_tokens=2, prefill_response=False)
    generator = DescriptionGenerator(spied, "mllm_tiny", load_prompt_set("lgd"), settings, Meter())
    generator.generate(_rgb(), _requests(["red car"]))
    assert all(t.endswith("ASSISTANT:") for t in spied.processor.calls[0]["text"])


@pytest.mark.parametrize("cap", [1, 3])
def test_generation_respects_the_token_cap(spied: MllmBundle, cap: int) -> None:
    settings = GenerationConfig(max_new_tokens=cap)
    generator = DescriptionGenerator(spied, "mllm_tiny", load_prompt_set("lgd"), settings, Meter())
    out = generator.generate(_rgb(), _requests(["man in the white shirt on the left", "red car"]))
    ((prompt_length, generated),) = spied.model.generated
    assert 1 <= generated.shape[1] - prompt_length <= cap
    assert all(1 <= d.new_tokens <= cap for d in out)


def test_an_empty_output_falls_back_to_a_photo_of_the_noun_phrase(tiny_mllm: MllmBundle) -> None:
    generator = DescriptionGenerator(
        tiny_mllm, "mllm_tiny", load_prompt_set("lgd"), GenerationConfig(), Meter()
    )
    request = DescriptionRequest("man in the white shirt on the left", "man", "attribute")
    made = generator._finish(request, "  \n ", prefilled=True, new_tokens=1)
    assert made.fallback and made.text == "a photo of man"
    made = generator._finish(request, " a tall man. Another sentence", prefilled=True, new_tokens=8)
    assert not made.fallback and made.text == "A photo of a tall man"


def test_expressions_of_one_image_share_one_generate_call(spied: MllmBundle) -> None:
    meter = Meter()
    generator = DescriptionGenerator(
        spied, "mllm_tiny", load_prompt_set("lgd"), GenerationConfig(max_new_tokens=3), meter
    )
    expressions = ["man in the white shirt on the left", "red car", "dog under the table"]
    batched = generator.generate(_rgb(), _requests(expressions))
    assert meter.calls("mllm_tiny") == 1 and len(spied.model.generated) == 1
    assert spied.model.generated[0][1].shape[0] == 6  # 3 expressions x 2 prompt kinds, one call in all

    # One by one: six calls, and left padding leaves the greedy texts as they are.
    single = [d for r in _requests(expressions) for d in generator.generate(_rgb(), [r])]
    assert meter.calls("mllm_tiny") == 1 + 6
    assert [d.text for d in batched] == [d.text for d in single]


def test_batch_size_splits_generate_calls(spied: MllmBundle) -> None:
    meter = Meter()
    settings = GenerationConfig(max_new_tokens=2, batch_size=4)
    generator = DescriptionGenerator(spied, "mllm_tiny", load_prompt_set("lgd"), settings, meter)
    generator.generate(
        _rgb(), _requests(["man in the white shirt on the left", "red car", "dog under the table"])
    )
    assert meter.calls("mllm_tiny") == 2
    assert [g.shape[0] for _, g in spied.model.generated] == [4, 2]


def test_an_idefics3_smolvlm_layout_works_through_its_own_chat_template() -> None:
    bundle = _bench_module().build_idefics3_bundle("tiny")
    spy = MllmBundle(SpyModel(bundle.model), SpyProcessor(bundle.processor), bundle.device, bundle.dtype)
    generator = DescriptionGenerator(
        spy, "smol", load_prompt_set("lgd"), GenerationConfig(max_new_tokens=3), Meter()
    )
    out = generator.generate(_rgb(), _requests(["red car", "dog under the table"]))
    texts = spy.processor.calls[0]["text"]
    assert all(
        t.startswith("<|im_start|>User:<image>") and t.endswith("Assistant: A photo of") for t in texts
    )
    assert len(out) == 4 and all(d.text for d in out)
    ((prompt_length, generated),) = spy.model.generated
    assert generated.shape[1] - prompt_length <= 3


# -- cache -------------------------------------------------------------------------------------------


def test_a_cache_hit_makes_no_mllm_call_in_memory_or_from_disk(tiny_mllm: MllmBundle, tmp_path: Path) -> None:
    meter = Meter()
    built: list[int] = []
    prompts, settings = load_prompt_set("lgd"), GenerationConfig(max_new_tokens=3)

    def factory() -> DescriptionGenerator:
        built.append(1)
        return DescriptionGenerator(tiny_mllm, "mllm_tiny", prompts, settings, meter)

    def run(
        ctx: ImageContext, requests: list[DescriptionRequest], settings=settings, prompts=prompts
    ) -> list:
        return cached_descriptions(
            ctx, requests, generator=factory, model_fingerprint="fp", prompts=prompts, settings=settings
        )

    cache = FeatureCache(memory_bytes=1 << 20, cache_dir=tmp_path / "cache")
    requests = _requests(["red car", "dog under the table"])
    first = run(_ctx(cache, meter), requests)
    assert meter.calls("mllm_tiny") == 1 and len(built) == 1

    again = run(_ctx(cache, meter), requests)  # memory hit
    assert meter.calls("mllm_tiny") == 1 and len(built) == 1
    assert [d.text for d in again] == [d.text for d in first]

    cache.clear_memory()  # disk hit (another worker, a restart)
    from_disk = run(_ctx(FeatureCache(memory_bytes=1 << 20, cache_dir=tmp_path / "cache"), meter), requests)
    assert meter.calls("mllm_tiny") == 1 and len(built) == 1
    assert [d.to_state() for d in from_disk] == [d.to_state() for d in first]

    # Only what is missing is generated: one new expression -> one call with its two sequences.
    run(_ctx(cache, meter), _requests(["red car", "man in the white shirt on the left"]))
    assert meter.calls("mllm_tiny") == 2

    # Another image, another prompt version or another token cap is a miss.
    run(_ctx(cache, meter, seed=1), requests)
    assert meter.calls("mllm_tiny") == 3
    bumped = PromptSet(
        prompts.name, prompts.version + "-b", prompts.attribute, prompts.surrounding, prompts.fallback
    )
    run(_ctx(cache, meter), requests, prompts=bumped)
    assert meter.calls("mllm_tiny") == 4
    run(_ctx(cache, meter), requests, settings=GenerationConfig(max_new_tokens=2))
    assert meter.calls("mllm_tiny") == 5
