"""Mixed precision on CUDA (``RIS_AUTOCAST``): where autocast applies, and where it never does."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from workers.engine.core.errors import ConfigError
from workers.engine.core.precision import autocast_context, autocast_dtype
from workers.engine.core.settings import EngineSettings


@pytest.mark.parametrize(
    ("mode", "device", "peer_compat", "expected"),
    [
        ("off", "cuda", False, None),
        ("bf16", "cuda", False, torch.bfloat16),
        ("fp16", "cuda:1", False, torch.float16),
        ("bf16", "cuda", True, None),  # peer_compat keeps the parity fixtures' float32
        ("bf16", "cpu", False, None),  # never on the CPU
        ("fp16", torch.device("cpu"), False, None),
    ],
)
def test_autocast_dtype(mode: str, device: str, peer_compat: bool, expected: torch.dtype | None) -> None:
    assert autocast_dtype(mode, device, SimpleNamespace(peer_compat=peer_compat)) == expected


def test_a_config_without_peer_compat_is_eligible() -> None:
    assert autocast_dtype("bf16", "cuda", object()) == torch.bfloat16


def test_bad_modes_are_refused_in_words(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="autocast mode 'fp8'"):
        autocast_dtype("fp8", "cuda")
    with pytest.raises(ConfigError, match="RIS_AUTOCAST must be off, bf16 or fp16"):
        EngineSettings.from_env({"RIS_MODEL_DIR": str(tmp_path), "RIS_AUTOCAST": "int4"})
    assert (
        EngineSettings.from_env({"RIS_MODEL_DIR": str(tmp_path), "RIS_AUTOCAST": "BF16"}).autocast == "bf16"
    )


def test_cpu_work_runs_in_float32_under_any_mode() -> None:
    layer = torch.nn.Linear(4, 4)
    with autocast_context("bf16", "cpu", SimpleNamespace(peer_compat=False)):
        out = layer(torch.ones(1, 4))
    assert out.dtype == torch.float32
