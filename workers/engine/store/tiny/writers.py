"""Random-weight tiny stand-ins in the real on-disk formats (``make_tiny``, ``write_tiny``).

- ``sam_tiny``: a segment_anything ``Sam`` with a 2-block ``ImageEncoderViT`` (1024 px input, 16 px
  patches, so the image embedding keeps SAM's ``64 x 64`` grid and the low-res masks SAM's 256 px),
  saved as a plain state-dict checkpoint; its sizes are the manifest's ``arch``.
- ``clip_tiny``: an open_clip ``CLIP`` (2-block ViT, patch 16 at 224 px: a ``14 x 14`` token grid; a
  2-layer text tower with context 77 and CLIP's 49408-token vocabulary, so open_clip's bundled BPE
  tokenizer is the real one), saved as ``open_clip_config.json`` + ``open_clip_pytorch_model.bin``: the
  layout of open_clip's hub repositories, loaded through ``create_model("local-dir:...")``.
- ``captioner_tiny``, ``mllm_tiny``, ``sd_tiny``, ``sam3_tiny``, ``qwen_vl_tiny``: written by ``workers.engine.store.tiny.generative``.

A tiny model proves wiring, never quality. Every model is written into a temporary folder beside its
final place and renamed into place, so an interrupted run never leaves half a model behind.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from workers.engine.core.errors import ModelStoreError
from workers.engine.store.catalogue import catalogue, catalogue_entry
from workers.engine.store.checksum import hash_tree
from workers.engine.store.loaders.clip import quiet_root_logging
from workers.engine.store.loaders.sam import SAM_TINY_ARCH, build_sam_tiny
from workers.engine.store.manifest import ModelEntry, ModelStore

TinyWriter = Callable[[Path, int], dict]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CLIP_TINY_CONFIG: dict[str, Any] = {
    "model_cfg": {
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {
        "size": 224,
        "mean": list(OPENAI_CLIP_MEAN),
        "std": list(OPENAI_CLIP_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}


def write_sam_tiny(dest: Path, seed: int = 0) -> dict:
    """Write ``sam_tiny.pth`` (a state dict) into ``dest``; returns the manifest's ``arch``."""
    dest.mkdir(parents=True, exist_ok=True)
    arch = dict(SAM_TINY_ARCH)
    torch.manual_seed(seed)
    model = build_sam_tiny(arch)
    torch.save(model.state_dict(), dest / arch["checkpoint"])
    return arch


def write_clip_tiny(dest: Path, seed: int = 0) -> dict:
    """Write ``open_clip_config.json`` and ``open_clip_pytorch_model.bin`` into ``dest``; returns ``arch``."""
    import open_clip

    dest.mkdir(parents=True, exist_ok=True)
    with (dest / "open_clip_config.json").open("w", encoding="utf-8") as f:
        json.dump(CLIP_TINY_CONFIG, f, indent=2)
    torch.manual_seed(seed)
    with quiet_root_logging():  # open_clip warns that the weights are random: that is the point here
        model = open_clip.create_model(f"local-dir:{dest}", load_weights=False, device="cpu")
    torch.save(model.state_dict(), dest / "open_clip_pytorch_model.bin")
    return {
        "model_name": "clip_tiny",
        "config": "open_clip_config.json",
        "checkpoint": "open_clip_pytorch_model.bin",
        "force_quick_gelu": False,
    }


def _generative_writer(function: str) -> TinyWriter:
    def write(dest: Path, seed: int = 0) -> dict:
        try:
            module = importlib.import_module("workers.engine.store.tiny.generative")
        except ModuleNotFoundError as exc:
            raise ModelStoreError(
                f"the tiny generative writers (workers.engine.store.tiny.generative) are not installed: {exc}"
            ) from exc
        return getattr(module, function)(dest, seed)

    return write


TINY_WRITERS: dict[str, TinyWriter] = {
    "sam_tiny": write_sam_tiny,
    "clip_tiny": write_clip_tiny,
    "captioner_tiny": _generative_writer("write_tiny_captioner"),
    "mllm_tiny": _generative_writer("write_tiny_mllm"),
    "sd_tiny": _generative_writer("write_tiny_diffusion"),
    "sam3_tiny": _generative_writer("write_tiny_sam3"),
    "qwen_vl_tiny": _generative_writer("write_tiny_qwen_vl"),
}


def tiny_names() -> list[str]:
    """Names of every tiny model in the catalogue, in catalogue order."""
    return [name for name, entry in catalogue().items() if entry.kind == "tiny"]


def write_tiny(store: ModelStore, name: str) -> ModelEntry:
    """Write one tiny model into the store and record it (replacing any earlier copy)."""
    cat = catalogue_entry(name)
    if cat.kind != "tiny" or name not in TINY_WRITERS:
        raise ModelStoreError(f"{name!r} is not a tiny model; tiny models are: {', '.join(TINY_WRITERS)}")
    seed = int(cat.source.get("seed", 0))
    staged = store.staging_folder(name)
    try:
        arch = TINY_WRITERS[name](staged, seed)
        store.install_folder(name, staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    entry = ModelEntry(
        name=name,
        family=cat.family,
        format=cat.format,
        profile=cat.profile,
        arch={**cat.arch, **dict(arch or {})},
        files=hash_tree(store.path(name)),
        source={"kind": "tiny", "seed": seed},
    )
    store.record(entry)
    return entry


def make_tiny(store: ModelStore, names: Sequence[str] | None = None, *, force: bool = False) -> list[str]:
    """Write the tiny models ``names`` (default: all) that are not present; with ``force``, rewrite them.

    Returns the names written. Raises ``ModelStoreError`` for a name that is not a tiny model.
    """
    wanted = list(names) if names is not None else tiny_names()
    written = []
    for name in wanted:
        if force or store.status(name) != "present":
            write_tiny(store, name)
            written.append(name)
    return written
