"""Loader of ``transformers_folder`` entries: captioners (BLIP-2 layout), multimodal LLMs (LLaVA, SmolVLM,
Qwen2.5-VL) and SAM 3 (``Sam3Model`` + ``Sam3Processor``).

Both through ``AutoModelForImageTextToText`` + ``AutoProcessor`` with ``from_pretrained(folder,
local_files_only=True)``: the same code path for the tiny stand-ins (``workers.engine.store.tiny.generative``)
and real checkpoints, never a download. An MLLM's processor carries its chat template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from workers.engine.core.device import resolve_device
from workers.engine.core.errors import ModelStoreError
from workers.engine.store.loaders.folders import require_folder, resolve_dtype

if TYPE_CHECKING:
    from workers.engine.store.manifest import ModelEntry, ModelStore


@dataclass(frozen=True)
class CaptionerBundle:
    """An image-to-text model and its processor (image processor + tokenizer), on ``device`` in ``dtype``."""

    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype


@dataclass(frozen=True)
class MllmBundle:
    """A multimodal LLM and its processor; ``processor.apply_chat_template`` builds the model's prompts."""

    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype

    def batch(self, texts: list[str], images: list[list[Any]]) -> dict[str, torch.Tensor]:
        """The processor's tensors for ``texts`` (rendered prompts) and ``images`` (a list of PIL images per
        prompt), left-padded for generation, on the model's device (floating tensors in its dtype)."""
        inputs = self.processor(
            text=texts, images=images, return_tensors="pt", padding=True, padding_side="left"
        )
        return {
            k: v.to(self.device, self.dtype) if torch.is_floating_point(v) else v.to(self.device)
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
        }


@dataclass(frozen=True)
class Sam3Bundle:
    """SAM 3 and its processor (image processor + CLIP tokenizer), on ``device`` in ``dtype``."""

    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype


def load_sam3(
    folder: Path, device: str | torch.device = "auto", dtype: torch.dtype | str | None = None
) -> Sam3Bundle:
    """Load SAM 3 (``Sam3Model``, ``Sam3Processor``) saved with ``save_pretrained`` in ``folder``, offline."""
    from transformers import Sam3Model, Sam3Processor

    folder = require_folder(folder, "config.json", "SAM 3")
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(resolved_device, dtype)
    processor = Sam3Processor.from_pretrained(folder, local_files_only=True)
    model = Sam3Model.from_pretrained(folder, dtype=resolved_dtype, local_files_only=True)
    return Sam3Bundle(
        model=model.to(resolved_device).eval(),
        processor=processor,
        device=resolved_device,
        dtype=resolved_dtype,
    )


def _load_image_text_to_text(folder: Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return model.to(device).eval(), processor


def load_captioner(
    folder: Path, device: str | torch.device = "auto", dtype: torch.dtype | str | None = None
) -> CaptionerBundle:
    """Load an image-to-text captioner (BLIP-2 layout by default) saved with ``save_pretrained`` in ``folder``."""
    folder = require_folder(folder, "config.json", "captioner")
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(resolved_device, dtype)
    model, processor = _load_image_text_to_text(folder, resolved_device, resolved_dtype)
    return CaptionerBundle(model=model, processor=processor, device=resolved_device, dtype=resolved_dtype)


def load_mllm(
    folder: Path, device: str | torch.device = "auto", dtype: torch.dtype | str | None = None
) -> MllmBundle:
    """Load a multimodal LLM (LLaVA-1.5, SmolVLM, ...) and its chat-template processor from ``folder``."""
    folder = require_folder(folder, "config.json", "multimodal LLM")
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(resolved_device, dtype)
    model, processor = _load_image_text_to_text(folder, resolved_device, resolved_dtype)
    if getattr(processor, "chat_template", None) is None:
        raise ModelStoreError(
            f"multimodal LLM folder {folder} has no chat template (chat_template.jinja or "
            "chat_template.json); its prompts cannot be built with the model's own template"
        )
    return MllmBundle(model=model, processor=processor, device=resolved_device, dtype=resolved_dtype)


def load_transformers_folder(store: ModelStore, entry: ModelEntry, device: torch.device) -> Any:
    """Loader of ``transformers_folder`` entries: a ``CaptionerBundle``, ``MllmBundle`` or ``Sam3Bundle`` by family."""
    folder = store.path(entry.name)
    if entry.family == "captioner":
        return load_captioner(folder, device)
    if entry.family == "mllm":
        return load_mllm(folder, device)
    if entry.family == "sam3":
        return load_sam3(folder, device)
    raise ModelStoreError(f"model {entry.name!r}: no transformers loader for family {entry.family!r}")
