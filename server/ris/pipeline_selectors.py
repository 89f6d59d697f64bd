"""Reads about the pipelines the product offers: the torch-free catalogue plus what the model store holds.

``pipeline_list`` is what ``GET /api/pipelines/`` and the pipelines page show: for each pipeline its name,
title, paper, one-line description, one line on what it needs (models, GPU or CPU), the store models its
default config names under the engine's profile (``RIS_ENGINE.profile``; the tiny profile names the
stand-ins) and whether each is in the store (recorded in the manifest with every file on disk; checksums
are left to the worker, which verifies before loading). The web process never imports torch here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from workers.engine.core.errors import ConfigError, ModelStoreError
from workers.engine.methods.catalogue import pipeline_catalogue
from workers.engine.store.manifest import ModelStore
from workers.engine.store.profiles import target_profile


def _present(store: ModelStore, name: str) -> bool:
    """Whether ``name`` is recorded in the store's manifest and all its recorded files exist."""
    try:
        entry = store.manifest.models.get(name)
    except (OSError, ValueError, ModelStoreError):
        return False
    if entry is None:
        return False
    folder = store.path(name)
    return all((folder / rel).is_file() for rel in entry.files)


def pipeline_list(*, profile: str, model_dir: Path | str, device: str = "auto") -> list[dict[str, Any]]:
    """Every pipeline, sorted by name, with ``needs``, ``models`` (``[{"key", "name", "present"}]``) and
    ``models_present`` (all of them present). ``auto`` lists the models of the set it wants on this machine
    (``paper`` with a GPU, ``cpu`` without; ``device`` as ``RIS_DEVICE``). A pipeline whose default config
    cannot be resolved lists no model and ``models_present: false``."""
    with contextlib.suppress(ConfigError):  # an unknown profile: every pipeline lists no model, below
        profile = target_profile(profile, device)
    store = ModelStore(model_dir)
    seen: dict[str, bool] = {}
    out = []
    for _name, entry in sorted(pipeline_catalogue().items()):
        item = {**entry.to_json(), "config_schema": entry.config_class().schema()}
        try:
            models = entry.models(profile)
        except ConfigError:
            item.update(models=[], models_present=False)
            out.append(item)
            continue
        listed = []
        for key, model in models:
            if model not in seen:
                seen[model] = _present(store, model)
            listed.append({"key": key, "name": model, "present": seen[model]})
        item.update(models=listed, models_present=all(m["present"] for m in listed))
        out.append(item)
    return out
