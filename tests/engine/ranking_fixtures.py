"""Helpers and fixtures of the ranking tests (CLIP features, cache, Global-Local, runtime).

Import the fixtures into a test module with ``from tests.engine.ranking_fixtures import ...``; pytest
picks up fixtures imported into a module's namespace.

- ``build_tiny_vit_clip`` / ``build_tiny_resnet_clip``: open_clip ``CLIP`` models built in memory from tiny
  configs, random weights (seeded), with open_clip's real BPE tokenizer: CLIP-only tests need no store.
- ``FakeClipBundle``: the shape of the store's ``ClipBundle`` (model, tokenizer, preprocess_cfg).
- ``CountingHub``: a hub over a real ``ModelHub`` that counts ``get`` calls per name.
- ``image_input``: an ``ImageInput`` with the sha256 of the array's bytes.
- ``TINY_SAM_AMG``: generator settings under which the random ``sam_tiny`` proposes a dozen masks fast.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from workers.engine.core.config import config_hash
from workers.engine.core.types import ImageInput

TINY_SAM_AMG = {
    "points_per_side": 2,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
}

_TEXT_CFG = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)


def build_tiny_vit_clip(seed: int = 0, *, image_size: int = 64, patch_size: int = 16, layers: int = 4) -> Any:
    """A random open_clip ViT CLIP: ``(image_size / patch_size)^2`` tokens, ``layers`` blocks, eval mode."""
    torch.manual_seed(seed)
    vision = CLIPVisionCfg(
        image_size=image_size, patch_size=patch_size, width=64, layers=layers, head_width=16
    )
    return open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=_TEXT_CFG).eval()


def build_tiny_resnet_clip(seed: int = 0) -> Any:
    """A random open_clip ModifiedResNet CLIP (64 px input, a 2 x 2 final grid), eval mode."""
    torch.manual_seed(seed)
    vision = CLIPVisionCfg(image_size=64, layers=[1, 1, 1, 1], width=8, head_width=16)
    model = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=_TEXT_CFG).eval()
    for module in model.modules():  # random BatchNorm statistics, so the trunk is not an identity on inputs
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


@functools.cache
def tokenizer() -> Any:
    """open_clip's BPE tokenizer (built once per process)."""
    return open_clip.get_tokenizer("ViT-B-32")


@dataclass
class FakeClipBundle:
    """What ``hub.get("clip_...")`` returns, for CLIP models built in memory."""

    name: str
    model: Any
    tokenizer: Any
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)


class CountingHub:
    """The hub protocol (``get``, ``wrapper``, ``fingerprint``) over a real hub, counting ``get`` calls per
    name (a wrapper asked for counts as a ``get``); extra in-memory models can be added."""

    def __init__(self, inner: Any | None = None, extra: dict[str, Any] | None = None) -> None:
        self.inner = inner
        self.extra = dict(extra or {})
        self.gets: Counter[str] = Counter()
        self.store = getattr(inner, "store", None)
        self._wrappers: dict[tuple[str, str, str], Any] = {}

    def get(self, name: str) -> Any:
        self.gets[name] += 1
        if name in self.extra:
            return self.extra[name]
        if self.inner is None:
            raise KeyError(name)
        return self.inner.get(name)

    def wrapper(self, name: str, kind: str, build: Any, key: Any = None) -> Any:
        model = self.get(name)
        wrapper_key = (name, kind, config_hash({"key": key, "model": id(model)}))
        if wrapper_key not in self._wrappers:
            self._wrappers[wrapper_key] = build(model)
        return self._wrappers[wrapper_key]

    def fingerprint(self, name: str) -> str:
        if self.inner is not None and name not in self.extra:
            return self.inner.fingerprint(name)
        return name


def image_input(rgb: np.ndarray) -> ImageInput:
    return ImageInput(rgb=rgb, sha256=hashlib.sha256(rgb.tobytes()).hexdigest())


def random_rgb(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def box_masks(height: int, width: int, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """``N x H x W`` bool masks, each the ``xyxy`` box given (exclusive ends)."""
    masks = torch.zeros((len(boxes), height, width), dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    return masks


@pytest.fixture
def single_torch_thread() -> Iterator[None]:
    """Run a test's tiny models on one thread (tiny forwards lose more to thread hand-offs than they gain)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
