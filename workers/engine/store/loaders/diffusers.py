"""Loader of ``diffusers_folder`` entries: a Stable Diffusion 1.5-layout pipeline without safety checker."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from workers.engine.core.device import resolve_device
from workers.engine.store.loaders.folders import require_folder, resolve_dtype

if TYPE_CHECKING:
    from workers.engine.store.manifest import ModelEntry, ModelStore


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


def load_diffusion(
    folder: Path, device: str | torch.device = "auto", dtype: torch.dtype | str | None = None
) -> DiffusionBundle:
    """Load a Stable Diffusion 1.5-layout pipeline (``model_index.json`` + components) without safety checker."""
    from diffusers import StableDiffusionPipeline

    folder = require_folder(folder, "model_index.json", "diffusion")
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


def load_diffusers_folder(store: ModelStore, entry: ModelEntry, device: torch.device) -> Any:
    """Loader of ``diffusers_folder`` entries: a ``DiffusionBundle``."""
    return load_diffusion(store.path(entry.name), device)
