"""Helpers shared by the peer parity fixtures' generators (``scripts/peer_parity``) and their tests.

Import with ``from tests.engine.peer_parity_support import ...``. Nothing here touches a peer's code: the
tests read only the JSON fixtures in ``tests/fixtures/peer_parity``.

- :func:`seeded_tensor`: a deterministic float32 tensor for a parameter name, so the generator (building the
  peer's own module) and a test (building ours) fill the same weights without storing them.
- :func:`load_fixture`: one fixture file as a dict; :func:`encode_uint8` / :func:`decode_uint8`: images in it.
- :func:`masks_from_boxes`: hand-made ``N x H x W`` bool masks from ``(x0, y0, x1, y1)`` boxes (end exclusive).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "peer_parity"


def seeded_tensor(name: str, shape: Sequence[int], seed: int = 0, scale: float = 0.05) -> torch.Tensor:
    """A float32 tensor of ``shape`` drawn from N(0, scale^2) by a generator seeded from ``(seed, name)``.

    LayerNorm weights (names ending ``ln*.weight``) are ``1 + noise`` so the towers stay well conditioned.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    values = rng.normal(0.0, scale, size=tuple(int(s) for s in shape)).astype(np.float32)
    leaf = name.rsplit(".", 2)
    if name.endswith(".weight") and len(leaf) >= 2 and leaf[-2].startswith("ln"):
        values = values + 1.0
    return torch.from_numpy(values)


def seeded_state_dict(reference: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict with every floating tensor of ``reference`` replaced by :func:`seeded_tensor`."""
    return {
        name: seeded_tensor(name, value.shape, seed) if value.is_floating_point() else value
        for name, value in reference.items()
    }


def encode_uint8(array: np.ndarray) -> dict[str, Any]:
    """A uint8 array as ``{"shape": [...], "base64": ...}`` (compact JSON for images)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return {"shape": list(array.shape), "base64": base64.b64encode(array.tobytes()).decode("ascii")}


def decode_uint8(value: dict[str, Any]) -> np.ndarray:
    """The array :func:`encode_uint8` wrote."""
    raw = base64.b64decode(value["base64"])
    return np.frombuffer(raw, dtype=np.uint8).reshape(value["shape"]).copy()


def load_fixture(name: str) -> dict[str, Any]:
    """``tests/fixtures/peer_parity/<name>`` parsed."""
    return json.loads((FIXTURE_DIR / name).read_text(encoding="utf-8"))


def masks_from_boxes(boxes: Sequence[Sequence[int]], height: int, width: int) -> np.ndarray:
    """``N x H x W`` bool masks, mask i true on ``[y0, y1) x [x0, x1)`` of box i."""
    out = np.zeros((len(boxes), height, width), dtype=bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        out[i, y0:y1, x0:x1] = True
    return out
