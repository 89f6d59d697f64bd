"""Asking a multimodal LLM of the store one question about one image (greedy, batched, left-padded).

The chat is the model's own template (``processor.apply_chat_template``), so LLaVA, SmolVLM and Qwen2.5-VL
share one code path: a user turn of ``{"type": "image"}`` and the question, then the generation prompt.
Every question is one sequence; the sequences of one call go through ``model.generate`` together. The
meter counts one call of the MLLM's store name per ``generate`` call, in ``stage``.

:func:`draw_marks` draws each instance's box and its number (1-based) on a copy of the image (the
"set-of-marks" prompt the SAM 3 agent uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from workers.engine.core.meter import current_meter

_MARK_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def draw_marks(rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """A copy of ``rgb`` (``H x W x 3`` uint8) with box i (``xyxy`` pixels) outlined and numbered ``i + 1``."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.ascontiguousarray(rgb)).convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(1, round(min(image.size) / 200))
    for i, box in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        colour = _MARK_COLOURS[i % len(_MARK_COLOURS)]
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=width)
        label = str(i + 1)
        left, top, right, bottom = draw.textbbox((x0, y0), label)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=colour)
        draw.text((x0, y0), label, fill=(255, 255, 255))
    return np.asarray(image)


class MllmAsker:
    """Greedy answers of one MLLM bundle (``model``, ``processor``, ``device``, ``dtype``) to image questions."""

    def __init__(self, bundle: Any, model_name: str, max_new_tokens: int) -> None:
        self.bundle = bundle
        self.model_name = model_name
        self.max_new_tokens = max_new_tokens

    @property
    def tokenizer(self) -> Any:
        return getattr(self.bundle.processor, "tokenizer", self.bundle.processor)

    def prompt(self, question: str) -> str:
        """``question`` about one image in the model's chat template, ending in the generation prompt."""
        chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.bundle.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)

    @torch.inference_mode()
    def ask(self, images: Sequence[np.ndarray], questions: Sequence[str], *, stage: str) -> list[str]:
        """One decoded answer per (image, question), in order (special tokens dropped)."""
        from PIL import Image

        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions")
        if not questions:
            return []
        pictures = [[Image.fromarray(np.ascontiguousarray(rgb)).convert("RGB")] for rgb in images]
        inputs = self.bundle.batch([self.prompt(q) for q in questions], pictures)
        length = inputs["input_ids"].shape[1]
        meter = current_meter()
        with meter.stage(stage), meter.model_call(self.model_name):
            generated = self.bundle.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return self.tokenizer.batch_decode(generated[:, length:].cpu(), skip_special_tokens=True)
