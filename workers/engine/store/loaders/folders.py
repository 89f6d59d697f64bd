"""What the folder formats share: a checked ``save_pretrained`` folder and the precision to load it in.

Precision: float16 on CUDA, float32 on CPU, unless the caller names a dtype; processors return float32
``pixel_values``, so callers move them with ``.to(bundle.device, bundle.dtype)`` before the model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workers.engine.core.errors import ConfigError, ModelStoreError

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


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


def require_folder(folder: Path, marker: str, what: str) -> Path:
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
