"""The one place a device name from the configuration becomes a ``torch.device``."""

from __future__ import annotations

import torch

from workers.engine.core.errors import ConfigError


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` when available else ``cpu``; anything else as ``torch.device`` reads it.

    Raises:
        ConfigError: a name torch does not know, or ``cuda`` on a machine without a CUDA device.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"device {device!r} is not a torch device name (use auto, cpu or cuda)") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asks for CUDA but no CUDA device is available")
    return resolved
