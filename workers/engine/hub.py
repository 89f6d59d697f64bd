"""``ModelHub``: models stay loaded in a worker, evicted least-recently-used under a memory budget, together
with every wrapper built on them.

``hub.get(name)`` returns the model (``Sam`` module, ``ClipBundle``, a generative bundle, a spaCy
pipeline) built by the store's loader after its checksums are verified, on the hub's device. A model
already loaded is returned as is (no reload, no re-hash). When the loaded models' parameter and buffer
bytes exceed ``memory_budget_mb``, the least recently used ones are dropped (never the one just asked
for, so a single model larger than the budget still loads). Loads are serialised by one lock: two
threads asking for the same model get the same object, built once.

Wrappers (a CLIP feature extractor, a captioner, a prompt refiner, ...) are owned by the hub too:
``hub.wrapper(name, kind, build, key=...)`` builds ``build(model)`` once per (model, kind, key) and keeps it
while the model stays loaded; evicting the model drops its wrappers with it, so nothing built on an evicted
model keeps its memory alive. Wrappers hold no meter: they record into the active one
(``workers.engine.core.meter.current_meter``).

``hub.fingerprint(name)`` is a short hash of the model's stored files (sha256 per file), so per-image cache
keys change when the weights change (re-made tiny models, a re-fetched checkpoint).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

import torch

from workers.engine.core.cache import config_hash
from workers.engine.core.device import resolve_device
from workers.engine.core.errors import ModelStoreError
from workers.engine.store.loaders.registry import load_model
from workers.engine.store.manifest import ModelStore

log = logging.getLogger(__name__)

W = TypeVar("W")


def _modules_in(obj: Any) -> Iterable[torch.nn.Module]:
    """The ``nn.Module`` objects an object holds directly or one level down (bundles, diffusers pipelines)."""
    if isinstance(obj, torch.nn.Module):
        yield obj
        return
    children: Iterable[Any] = ()
    components = getattr(obj, "components", None)
    if isinstance(components, dict):
        children = components.values()
    elif is_dataclass(obj):
        children = (getattr(obj, f.name) for f in fields(obj))
    elif hasattr(obj, "__dict__"):
        children = vars(obj).values()
    for child in children:
        if isinstance(child, torch.nn.Module):
            yield child
        elif child is not obj and isinstance(getattr(child, "components", None), dict):
            yield from (c for c in child.components.values() if isinstance(c, torch.nn.Module))


def model_nbytes(obj: Any) -> int:
    """Bytes of the parameters and buffers of every module ``obj`` holds (each tensor counted once)."""
    seen: set[int] = set()
    total = 0
    for module in _modules_in(obj):
        for tensor in (*module.parameters(), *module.buffers()):
            key = id(tensor)
            if key not in seen:
                seen.add(key)
                total += tensor.numel() * tensor.element_size()
    return total


class ModelHub:
    """Loaded models by store name, LRU-evicted under ``memory_budget_mb``; thread-safe.

    Attributes:
        store: the ``ModelStore`` models come from.
        device: the resolved ``torch.device`` (``"auto"`` -> ``cuda`` if available, else ``cpu``).
        memory_budget_bytes: the cap on the sum of loaded models' parameter + buffer bytes.
        load_counts: ``Counter`` of loads per name (a second ``get`` of a loaded model does not count).
        load_seconds: total seconds spent loading, per name.
    """

    def __init__(
        self, store: ModelStore, device: str | torch.device = "auto", memory_budget_mb: int = 8192
    ) -> None:
        if memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
        self.store = store
        self.device = resolve_device(device)
        self.memory_budget_bytes = int(memory_budget_mb) * 1024 * 1024
        self.load_counts: Counter[str] = Counter()
        self.load_seconds: dict[str, float] = {}
        self._models: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._wrappers: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.RLock()

    def get(self, name: str) -> Any:
        """The loaded, checksum-verified model ``name`` on ``self.device`` (loads it on first use)."""
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name][0]
            started = time.perf_counter()
            model = load_model(self.store, name, self.device)
            elapsed = time.perf_counter() - started
            nbytes = model_nbytes(model)
            self._models[name] = (model, nbytes)
            self.load_counts[name] += 1
            self.load_seconds[name] = self.load_seconds.get(name, 0.0) + elapsed
            log.info("loaded model %s on %s in %.2f s (%.1f MB)", name, self.device, elapsed, nbytes / 1e6)
            self._evict_over_budget(keep=name)
            return model

    def _evict_over_budget(self, keep: str) -> None:
        evicted = False
        while self.loaded_bytes() > self.memory_budget_bytes:
            victim = next((n for n in self._models if n != keep), None)
            if victim is None:
                break
            self._drop(victim)
            evicted = True
            log.info("evicted model %s (memory budget %.0f MB)", victim, self.memory_budget_bytes / 2**20)
        if evicted:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _drop(self, name: str) -> bool:
        """Forget model ``name`` and every wrapper built on it (the caller holds the lock)."""
        dropped = self._models.pop(name, None) is not None
        for key in [k for k in self._wrappers if k[0] == name]:
            del self._wrappers[key]
        return dropped

    def wrapper(self, name: str, kind: str, build: Callable[[Any], W], key: Any = None) -> W:
        """The wrapper of ``kind`` built by ``build(model)`` on model ``name``, once per (name, kind, key).

        Args:
            name: store name of the model (loaded on first use, like :meth:`get`).
            kind: what the wrapper is (``"clip_features"``, ``"captioner"``, ``"refiner"``, ...).
            build: makes the wrapper from the loaded model; it must hold no meter of its own.
            key: JSON-able settings the wrapper depends on (``None``: one wrapper per model and kind).

        The wrapper lives as long as the model stays loaded; evicting the model drops it.
        """
        with self._lock:
            model = self.get(name)
            wrapper_key = (name, kind, config_hash({"key": key}))
            wrapper = self._wrappers.get(wrapper_key)
            if wrapper is None:
                wrapper = self._wrappers[wrapper_key] = build(model)
            return wrapper

    def wrappers(self, name: str) -> list[Any]:
        """The wrappers currently built on model ``name``."""
        with self._lock:
            return [w for k, w in self._wrappers.items() if k[0] == name]

    def fingerprint(self, name: str) -> str:
        """A short hash of model ``name``'s stored files (its name alone for a model the store does not know)."""
        store = getattr(self, "store", None)
        try:
            files = store.entry(name).files if store is not None else None
        except ModelStoreError:
            files = None
        return name if files is None else config_hash({"name": name, "files": dict(files)})

    def is_loaded(self, name: str) -> bool:
        with self._lock:
            return name in self._models

    def loaded(self) -> list[str]:
        """Names of the loaded models, least recently used first."""
        with self._lock:
            return list(self._models)

    def loaded_bytes(self) -> int:
        """Sum of the loaded models' parameter + buffer bytes."""
        with self._lock:
            return sum(nbytes for _, nbytes in self._models.values())

    def evict(self, name: str) -> bool:
        """Drop ``name`` if loaded; returns whether it was."""
        with self._lock:
            dropped = self._drop(name)
        if dropped:
            gc.collect()
        return dropped

    def clear(self) -> None:
        """Drop every loaded model."""
        with self._lock:
            self._models.clear()
            self._wrappers.clear()
        gc.collect()

    def stats(self) -> dict[str, Any]:
        """JSON-able summary: device, budget, loaded models with their MB, loads and load seconds per name."""
        with self._lock:
            return {
                "device": str(self.device),
                "memory_budget_mb": self.memory_budget_bytes / 2**20,
                "loaded": {name: nbytes / 2**20 for name, (_, nbytes) in self._models.items()},
                "loads": dict(self.load_counts),
                "load_seconds": dict(self.load_seconds),
            }
