"""Loader of ``python_package`` entries: a model shipped inside an installed Python package (spaCy's parser)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from workers.engine.store.manifest import ModelEntry, ModelStore


def load_python_package(store: ModelStore, entry: ModelEntry, device: torch.device) -> Any:
    """``spacy.load`` for the text family, else the imported module (``device`` is unused: CPU packages)."""
    if entry.family == "text":
        import spacy

        return spacy.load(entry.arch.get("spacy_name") or entry.source["module"])
    return importlib.import_module(entry.source["module"])
