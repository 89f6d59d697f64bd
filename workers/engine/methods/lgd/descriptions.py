"""LGD's generative descriptions: a multimodal LLM describes the referred object and what surrounds it.

For an image and a referring expression, two prompts are built from the expression (docs/METHODS.md#lgd-descriptions):

- the *attribute* prompt asks for the referent's key attributes -> ``T_att``, e.g.
  "A photo of a man in a white shirt";
- the *surrounding* prompt asks for the objects around it -> ``T_sur``, e.g.
  "A photo of the man surrounded by a table and two chairs".

The wording is data, not code: a :class:`PromptSet` is read from ``workers/engine/methods/lgd/prompts/<name>.json``
(``lgd.json`` is the default and documents itself), with a ``version`` that is part of every cache key.
Prompts are rendered with the model's own chat template (``processor.apply_chat_template``), so one code path
serves LLaVA-1.5 ("USER: <image>\\n... ASSISTANT:") and SmolVLM / Idefics3 ("User:<image>...
<end_of_utterance>\\nAssistant:") alike. With ``prefill_response`` the set's response prefix ("A photo of")
is written into the assistant turn (``continue_final_message``) and the model continues it, which pins the
output shape the paper reports; a template that cannot continue a final message is rendered without it.

Decoding is greedy (``do_sample=False``, one beam) with a ``max_new_tokens`` cap; the text is cleaned to one
sentence (:func:`clean_description`) and falls back to ``"a photo of {noun_phrase}"`` when nothing is left.

Cost: every (expression, kind) pair missing from the cache becomes one sequence, and *all* of an image's
sequences (both kinds, every expression) go through one left-padded ``model.generate`` call, in chunks of at
most ``batch_size`` sequences. Each sequence carries its own copy of the image (the processors expect one
image per image token), so the vision tower runs once per sequence; against the language model's decoding
that is small. The meter counts one call of the MLLM's store name per ``generate`` call (stage
``mllm_descriptions``).

Caching (:func:`cached_descriptions`): one per-image cache entry per (image sha256, expression, prompt kind),
keyed by the model's file checksums, the prompt set's version and the hash of that kind's wording, and the
generation settings (token cap, prefill), in memory and on disk through the per-image cache. A hit makes no
MLLM call and does not even load the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workers.engine.core.cache import cache_params
from workers.engine.core.meter import Meter, current_meter
from workers.engine.methods.lgd.config import GenerationConfig
from workers.engine.methods.lgd.prompt_set import PromptSet

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


# ---------------------------------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------------------------------


def clean_description(text: str) -> str:
    """One sentence: whitespace collapsed, wrapping quotes dropped, cut after the first sentence end.

    The final full stop is dropped too ("A photo of a man." -> "A photo of a man"). An empty result means
    the model said nothing usable; the caller falls back.
    """
    text = " ".join(str(text).split())
    text = text.strip(_QUOTES + " ")
    match = _SENTENCE_END.search(text)
    if match is not None:
        text = text[: match.start() + 1]
    text = text.rstrip(".").strip(_QUOTES + " ")
    return text


def join_prefix(prefix: str, continuation: str) -> str:
    """``prefix`` followed by the model's ``continuation`` with one space between (no space before punctuation)."""
    continuation = continuation.strip()
    if not prefix:
        return continuation
    if not continuation:
        return prefix
    sep = "" if continuation[0] in ",.;:!?'" else " "
    return f"{prefix}{sep}{continuation}"


# ---------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DescriptionRequest:
    """One sequence to generate: an expression, its noun phrase and the prompt kind."""

    expression: str
    noun_phrase: str
    kind: str


@dataclass(frozen=True)
class GeneratedDescription:
    """A cleaned description and how it came about.

    Attributes:
        text: the cleaned one-sentence description (the fallback when the model gave nothing).
        raw: the decoded continuation before cleaning (prefix not included).
        new_tokens: tokens the model generated for this sequence (EOS included, padding not), <= the cap.
        fallback: whether ``text`` is the fallback.
    """

    text: str
    raw: str
    new_tokens: int
    fallback: bool

    def to_state(self) -> dict[str, Any]:
        return {"text": self.text, "raw": self.raw, "new_tokens": self.new_tokens, "fallback": self.fallback}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> GeneratedDescription:
        return cls(
            text=str(state["text"]),
            raw=str(state["raw"]),
            new_tokens=int(state["new_tokens"]),
            fallback=bool(state["fallback"]),
        )


class DescriptionGenerator:
    """Generates LGD descriptions with one MLLM bundle (``model``, ``processor``, ``device``, ``dtype``).

    Args:
        bundle: an ``MllmBundle`` (``workers.engine.store.loaders.transformers.load_mllm``).
        model_name: the store name, used for the meter.
        prompts: the prompt set.
        settings: decoding settings.
        meter: where generate calls and seconds are counted; ``None``: the active meter (a wrapper kept by
            the model hub holds none).
    """

    def __init__(
        self,
        bundle: Any,
        model_name: str,
        prompts: PromptSet,
        settings: GenerationConfig,
        meter: Meter | None = None,
    ) -> None:
        self.bundle = bundle
        self.model_name = model_name
        self.prompts = prompts
        self.settings = settings
        self._meter = meter

    @property
    def meter(self) -> Meter:
        return self._meter if self._meter is not None else current_meter()

    @property
    def processor(self) -> Any:
        return self.bundle.processor

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    # -- prompts --------------------------------------------------------------------------------------
    def messages(self, request: DescriptionRequest, *, prefill: bool) -> list[dict[str, Any]]:
        """The chat of one request: a user turn (image, instruction), and the prefilled assistant turn."""
        template = self.prompts.template(request.kind)
        chat: list[dict[str, Any]] = [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": template.render(request.expression, request.noun_phrase)},
                ],
            }
        ]
        if prefill and template.response_prefix:
            chat.append(
                {"role": "assistant", "content": [{"type": "text", "text": template.response_prefix}]}
            )
        return chat

    def prompt_text(self, request: DescriptionRequest) -> tuple[str, bool]:
        """``(rendered prompt, prefilled)`` through the model's own chat template."""
        prefix = self.prompts.template(request.kind).response_prefix
        if self.settings.prefill_response and prefix:
            try:
                text = self.processor.apply_chat_template(
                    self.messages(request, prefill=True), continue_final_message=True, tokenize=False
                )
                return text, True
            except ValueError:  # a template that cannot leave the assistant turn open
                pass
        text = self.processor.apply_chat_template(
            self.messages(request, prefill=False), add_generation_prompt=True, tokenize=False
        )
        return text, False

    # -- generation -----------------------------------------------------------------------------------
    def _stop_ids(self) -> set[int]:
        ids = set()
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(self.tokenizer, name, None)
            if isinstance(value, int):
                ids.add(value)
        eos = getattr(getattr(self.bundle.model, "generation_config", None), "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
        return ids

    def _finish(
        self, request: DescriptionRequest, raw: str, prefilled: bool, new_tokens: int
    ) -> GeneratedDescription:
        template = self.prompts.template(request.kind)
        continuation = clean_description(raw)
        prefix = template.response_prefix
        if prefilled:
            text = clean_description(join_prefix(prefix, continuation)) if continuation else ""
        else:
            text = continuation
        if text:
            return GeneratedDescription(text=text, raw=raw, new_tokens=new_tokens, fallback=False)
        fallback = clean_description(self.prompts.fallback_text(request.expression, request.noun_phrase))
        return GeneratedDescription(text=fallback, raw=raw, new_tokens=new_tokens, fallback=True)

    @torch.inference_mode()
    def generate(self, rgb: np.ndarray, requests: Sequence[DescriptionRequest]) -> list[GeneratedDescription]:
        """Descriptions of ``requests`` on one image (``H x W x 3`` uint8 RGB), in order.

        All requests share ``generate`` calls of at most ``settings.batch_size`` left-padded sequences.
        """
        from PIL import Image

        requests = list(requests)
        if not requests:
            return []
        image = Image.fromarray(np.ascontiguousarray(rgb)).convert("RGB")
        rendered = [self.prompt_text(r) for r in requests]
        stop = self._stop_ids()
        out: list[GeneratedDescription] = []
        size = self.settings.batch_size
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            texts = [text for text, _ in rendered[start : start + size]]
            inputs = self.bundle.batch(texts, [[image] for _ in chunk])
            prompt_length = inputs["input_ids"].shape[1]
            with self.meter.stage("mllm_descriptions"), self.meter.model_call(self.model_name):
                generated = self.bundle.model.generate(
                    **inputs,
                    max_new_tokens=self.settings.max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = generated[:, prompt_length:].cpu()
            decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            for i, request in enumerate(chunk):
                tokens = new[i].tolist()
                count = 0
                for token in tokens:  # generated tokens up to and including the first stop token
                    count += 1
                    if token in stop:
                        break
                prefilled = rendered[start + i][1]
                out.append(self._finish(request, decoded[i], prefilled, min(count, len(tokens))))
        return out


# ---------------------------------------------------------------------------------------------------
# Cached descriptions per image
# ---------------------------------------------------------------------------------------------------

#: The per-image cache kind of one description.
CACHE_KIND = "lgd_description"


def description_params(
    expression: str, kind: str, *, model_fingerprint: str, prompts: PromptSet, settings: GenerationConfig
) -> dict[str, Any]:
    """What one cached description depends on: expression, kind, model files, prompt version and wording,
    decoding settings."""
    return cache_params(
        models={"mllm": model_fingerprint},
        settings=settings.cache_params(),
        expression=expression,
        kind=kind,
        prompt_version=prompts.version,
        prompt=prompts.template(kind).fingerprint(),
        fallback=prompts.fallback,
    )


def cached_descriptions(
    ctx: Any,
    requests: Sequence[DescriptionRequest],
    *,
    generator: Callable[[], DescriptionGenerator],
    model_fingerprint: str,
    prompts: PromptSet,
    settings: GenerationConfig,
) -> list[GeneratedDescription]:
    """Descriptions of ``requests`` on ``ctx``'s image: cached ones read back, the rest generated together.

    Args:
        ctx: an ``ImageContext`` (image, per-image cache).
        requests: the (expression, noun phrase, kind) to describe; duplicates are generated once.
        generator: builds the generator (loads the MLLM) only when something is missing.
        model_fingerprint: the MLLM's ``ModelHub.fingerprint``.
    """
    requests = list(requests)
    keys = [
        ctx.key(
            CACHE_KIND,
            description_params(
                r.expression, r.kind, model_fingerprint=model_fingerprint, prompts=prompts, settings=settings
            ),
        )
        for r in requests
    ]
    found: dict[Any, GeneratedDescription] = {}
    for key in dict.fromkeys(keys):
        state = ctx.cache.get(key)
        if state is not None:
            found[key] = GeneratedDescription.from_state(state)
    missing = [
        (key, request) for key, request in dict(zip(keys, requests, strict=True)).items() if key not in found
    ]
    if missing:
        made = generator().generate(ctx.rgb, [request for _, request in missing])
        for (key, _), description in zip(missing, made, strict=True):
            ctx.cache.put(key, description.to_state())
            found[key] = description
    return [found[key] for key in keys]
