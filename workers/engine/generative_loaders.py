"""Loaders for the generative model families of the model store, one per on-disk format.

Each loader takes a local folder that the model store has already verified, and builds the model with
the library's own ``from_pretrained(folder, local_files_only=True)``: the same code path for the tiny
random stand-ins (:mod:`workers.engine.store.tiny_generative`) and for real hub checkpoints, and never a
download. Precision: float16 on CUDA, float32 on CPU, unless the caller names a dtype; processors return
float32 ``pixel_values``, so callers move them with ``.to(bundle.device, bundle.dtype)`` before the model.

- captioner (``transformers_folder``, e.g. BLIP-2): ``AutoModelForImageTextToText`` + ``AutoProcessor``
- mllm (``transformers_folder``, e.g. LLaVA-1.5, SmolVLM): ``AutoModelForImageTextToText`` + ``AutoProcessor``
  (the processor carries the model's chat template)
- diffusion (``diffusers_folder``, SD 1.5 layout): ``StableDiffusionPipeline`` without safety checker
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.engine.device import resolve_device
from workers.engine.errors import ConfigError, ModelStoreError

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


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


@dataclass(frozen=True)
class DiffusionBundle:
    """A Stable Diffusion pipeline; its parts are reachable as properties for code that drives them itself."""

    pipe: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def unet(self) -> Any:
        return self.pipe.unet

    @property
    def vae(self) -> Any:
        return self.pipe.vae

    @property
    def text_encoder(self) -> Any:
        return self.pipe.text_encoder

    @property
    def tokenizer(self) -> Any:
        return self.pipe.tokenizer

    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel along each side (8 for SD 1.5)."""
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)


def resolve_dtype(device: torch.device, dtype: torch.dtype | str | None) -> torch.dtype:
    """``None`` -> float16 on CUDA, float32 elsewhere; a name such as ``"fp16"`` -> its torch dtype."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPE_NAMES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(f"dtype {dtype!r} is not one of {sorted(_DTYPE_NAMES)}") from None


def _require_folder(folder: Path, marker: str, what: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelStoreError(
            f"{what} folder {folder} does not exist; get it with `python manage.py models fetch NAME` "
            "or write the tiny stand-ins with `python manage.py models make-tiny`"
        )
    if not (folder / marker).is_file():
        raise ModelStoreError(
            f"{what} folder {folder} has no {marker}, so it is not a saved model in this format; "
            "fetch it again with `python manage.py models fetch NAME`"
        )
    return folder


def _load_image_text_to_text(folder: Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return model.to(device).eval(), processor


def load_captioner(
    folder: Path, device: str | torch.device = "auto", dtype: torch.dtype | str | None = None
) -> CaptionerBundle:
    """Load an image-to-text captioner (BLIP-2 layout by default) saved with ``save_pretrained`` in ``folder``."""
    folder = _require_folder(folder, "config.json", "captioner")
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(resolved_device, dtype)
    model, processor = _load_image_text_to_text(folder, resolved_device, resolved_dtype)
    return CaptionerBundle(model=model, processor=processor, device=resolved_device, dtype=resolved_dtype)


def load_mllm(
    folder: Path, device: str | torch.device = "auto", dtype: torch.dtype | str | None = None
) -> MllmBundle:
    """Load a multimodal LLM (LLaVA-1.5, SmolVLM, ...) and its chat-template processor from ``folder``."""
    folder = _require_folder(folder, "config.json", "multimodal LLM")
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(resolved_device, dtype)
    model, processor = _load_image_text_to_text(folder, resolved_device, resolved_dtype)
    if getattr(processor, "chat_template", None) is None:
        raise ModelStoreError(
            f"multimodal LLM folder {folder} has no chat template (chat_template.jinja or "
            "chat_template.json); its prompts cannot be built with the model's own template"
        )
    return MllmBundle(model=model, processor=processor, device=resolved_device, dtype=resolved_dtype)


def load_diffusion(
    folder: Path, device: str | torch.device = "auto", dtype: torch.dtype | str | None = None
) -> DiffusionBundle:
    """Load a Stable Diffusion 1.5-layout pipeline (``model_index.json`` + components) without safety checker."""
    from diffusers import StableDiffusionPipeline

    folder = _require_folder(folder, "model_index.json", "diffusion")
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(resolved_device, dtype)
    pipe = StableDiffusionPipeline.from_pretrained(
        folder,
        dtype=resolved_dtype,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    pipe = pipe.to(resolved_device)
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.eval()
    return DiffusionBundle(pipe=pipe, device=resolved_device, dtype=resolved_dtype)
