"""Mixed precision on CUDA: which work runs under ``torch.autocast`` (``RIS_AUTOCAST``).

``off`` (the default) keeps every model in the dtype its loader gives (float32). ``bf16`` or ``fp16`` runs
``Engine.predict`` / ``prepare`` under ``torch.autocast("cuda", dtype)`` on a CUDA device, which covers every
model the pipelines call there: SAM's image encoder and mask decoder (the stock generator's thresholds are
applied to float32 logits: autocast returns float32 from the final upsampling), CLIP's towers, the captioner,
the MLLM and Stable Diffusion's UNet and VAE; see docs/PERFORMANCE.md for the per-model notes. On the CPU it
does nothing: bfloat16 matmuls gain little on the CPUs seen here and change the numbers.

A config with ``peer_compat=True`` never runs under autocast: its numbers must match the float32 parity
fixtures (docs/METHODS.md). Where a peer's public code itself runs in half precision on a GPU, that is not
reproduced; docs/METHODS.md lists it as a remaining difference.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from workers.engine.core.errors import ConfigError

__all__ = ["AUTOCAST_MODES", "autocast_context", "autocast_dtype"]

AUTOCAST_MODES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(mode: str, device: str | torch.device, config: Any = None) -> torch.dtype | None:
    """The autocast dtype for work on ``device`` under ``config``, or ``None`` for none.

    Raises:
        ConfigError: ``mode`` is not ``off``, ``bf16`` or ``fp16``.
    """
    if mode not in AUTOCAST_MODES:
        raise ConfigError(f"autocast mode {mode!r} is not one of {', '.join(AUTOCAST_MODES)}")
    if not str(device).startswith("cuda") or bool(getattr(config, "peer_compat", False)):
        return None
    return AUTOCAST_MODES[mode]


def autocast_context(
    mode: str, device: str | torch.device, config: Any = None
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast("cuda", dtype)`` when :func:`autocast_dtype` gives one, else a no-op context."""
    dtype = autocast_dtype(mode, device, config)
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()
