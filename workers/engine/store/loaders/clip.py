"""Loader of ``open_clip_checkpoint`` entries: a ``ClipBundle`` (model, tokenizer, preprocess config).

Through open_clip's own API: ``create_model("local-dir:FOLDER", load_weights=False)`` builds from the folder's
``open_clip_config.json``, ``load_checkpoint`` loads the weights, ``get_tokenizer`` gives the tokenizer the
config names (open_clip's bundled BPE for OpenAI-style text towers).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from workers.engine.core.errors import ModelStoreError

if TYPE_CHECKING:
    from workers.engine.store.manifest import ModelEntry, ModelStore


@dataclass
class ClipBundle:
    """An open_clip model with what it needs to read text and images.

    Attributes:
        name: store name (``clip_vit_b_16``, ``clip_tiny``, ...).
        model: open_clip ``CLIP`` in eval mode on ``device``; ``model.visual`` is the image tower.
        tokenizer: open_clip tokenizer; ``tokenizer(list_of_str)`` -> ``B x context_length`` int64 (CPU).
        preprocess_cfg: the model's image preprocessing as data: ``size`` (``(H, W)``), ``mean``, ``std``
            (RGB in [0, 1] units), ``interpolation``, ``resize_mode``, ``fill_color``.
        device: where the model lives.
        arch: the manifest's arch of the model.
    """

    name: str
    model: torch.nn.Module
    tokenizer: Any
    preprocess_cfg: dict[str, Any]
    device: torch.device
    arch: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` the image tower takes."""
        size = self.preprocess_cfg["size"]
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def context_length(self) -> int:
        """Token positions of the text tower (77 for CLIP)."""
        return int(getattr(self.tokenizer, "context_length", self.model.context_length))

    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text embedding."""
        return int(self.model.text_projection.shape[-1])

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``B x context_length`` int64 token ids on ``device`` (long texts are truncated by the tokenizer)."""
        return self.tokenizer(list(texts)).to(self.device)

    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        """open_clip's eval transform (PIL image -> ``3 x H x W`` float tensor) built from ``preprocess_cfg``."""
        from open_clip.transform import PreprocessCfg, image_transform_v2

        return image_transform_v2(PreprocessCfg(**self.preprocess_cfg), is_train=False)


@contextlib.contextmanager
def quiet_root_logging() -> Iterator[None]:
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def load_open_clip(store: ModelStore, entry: ModelEntry, device: torch.device) -> ClipBundle:
    """Loader for ``open_clip_checkpoint`` entries (a folder with ``open_clip_config.json`` + weights)."""
    import open_clip

    folder = store.path(entry.name)
    checkpoint = store.file(entry.name, entry.arch["checkpoint"])
    identifier = f"local-dir:{folder}"
    try:
        # open_clip logs "initialized randomly" when load_weights=False; the weights follow right below.
        with quiet_root_logging():
            model = open_clip.create_model(
                identifier,
                load_weights=False,
                device="cpu",
                force_quick_gelu=bool(entry.arch.get("force_quick_gelu", False)),
            )
        open_clip.load_checkpoint(model, str(checkpoint), strict=True, weights_only=True)
        tokenizer = open_clip.get_tokenizer(identifier)
    except (RuntimeError, ValueError, KeyError, FileNotFoundError) as exc:
        raise ModelStoreError(f"could not build open_clip model {entry.name!r} from {folder}: {exc}") from exc
    preprocess = dict(model.visual.preprocess_cfg)
    if isinstance(preprocess.get("size"), list):
        preprocess["size"] = tuple(preprocess["size"])
    return ClipBundle(
        name=entry.name,
        model=model.to(device).eval(),
        tokenizer=tokenizer,
        preprocess_cfg=preprocess,
        device=device,
        arch=dict(entry.arch),
    )
