"""Per-image cache of image-level artefacts (proposals, SAM image embeddings, per-mask features), and the
``ImageContext`` through which every pipeline reaches it.

A value is keyed by :class:`CacheKey`: the image's sha256, a kind (``"proposals"``, ``"sam_embedding"``,
``"clip_visual"``, ...) and a short hash of everything the value depends on (model name and checksum,
the settings that change it; see :func:`config_hash`). So a second expression on an image, or a later
job with the same settings, finds the work done, and a changed setting never reads a stale value.

Two levels:

- memory: an LRU dict bounded by a byte budget (the sum of the tensors' and arrays' ``nbytes``);
- disk (optional, ``cache_dir``): one ``torch.save`` file per key under ``cache_dir/<sha[:2]>/<sha>/``,
  written to a temporary file and renamed into place, so a crash never leaves half a file and two workers
  writing the same key both leave a whole one. Disk hits are promoted to memory.

Keys are built in one place, :func:`cache_params`: the models a value was computed with (by their file
fingerprints, ``ModelHub.fingerprint``), the masks it covers (``Proposals.digest()``), the settings that change
it, and anything else named by keyword.

Values must be *tensor trees*: dicts (str keys), lists and tuples of ``torch.Tensor``, ``np.ndarray``,
``str``, ``int``, ``float``, ``bool`` or ``None``. They are read back with ``torch.load(weights_only=True)``,
so no pickled code ever runs from the cache folder. Tuples come back as tuples, arrays as arrays.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from workers.engine.core.config import config_hash
from workers.engine.core.meter import Meter
from workers.engine.core.types import ImageInput

if TYPE_CHECKING:
    from workers.engine.blocks.masks import Proposals

log = logging.getLogger(__name__)

T = TypeVar("T")

_ARRAY_TAG = "__ndarray__"
_TUPLE_TAG = "__tuple__"


@dataclass(frozen=True)
class CacheKey:
    """Where a per-image value lives.

    Attributes:
        image_sha256: the image's 64-hex digest.
        kind: what the value is, a short identifier (letters, digits, ``_``, ``-``, ``.``).
        params_hash: :func:`config_hash` of what the value depends on.
    """

    image_sha256: str
    kind: str
    params_hash: str

    def __post_init__(self) -> None:
        if len(self.image_sha256) != 64 or not all(c in "0123456789abcdef" for c in self.image_sha256):
            raise ValueError(
                f"CacheKey.image_sha256 must be 64 lower-case hex digits, got {self.image_sha256!r}"
            )
        if not self.kind or not all(c.isalnum() or c in "_-." for c in self.kind):
            raise ValueError(f"CacheKey.kind must be a short identifier, got {self.kind!r}")

    @classmethod
    def of(cls, image_sha256: str, kind: str, params: Mapping[str, Any]) -> CacheKey:
        return cls(image_sha256, kind, config_hash(params))

    def relpath(self) -> Path:
        return Path(self.image_sha256[:2]) / self.image_sha256 / f"{self.kind}-{self.params_hash}.pt"


def tree_nbytes(value: Any) -> int:
    """Approximate memory held by a tensor tree, in bytes."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Mapping):
        return sum(tree_nbytes(v) + len(str(k)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(tree_nbytes(v) for v in value) + 8 * len(value)
    if isinstance(value, (str, bytes)):
        return len(value)
    return 8


def _encode(value: Any, where: str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"cache value at {where} is an object array, which cannot be stored")
        return {_ARRAY_TAG: torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"cache value at {where} has a non-string key {k!r}")
            out[k] = _encode(v, f"{where}.{k}")
        return out
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cache value at {where} is a {type(value).__name__}; only tensor trees can be cached")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_ARRAY_TAG}:
            return value[_ARRAY_TAG].numpy()
        if set(value) == {_TUPLE_TAG}:
            return tuple(_decode(v) for v in value[_TUPLE_TAG])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class FeatureCache:
    """Two-level (memory LRU, optional disk) cache of per-image tensor trees.

    Args:
        memory_bytes: byte budget of the in-memory level; the least recently used values are dropped
            beyond it. A single value larger than the budget is not kept in memory (it may still go to disk).
        cache_dir: folder of the disk level, created on first write; ``None`` keeps the cache in memory only.
    """

    def __init__(self, *, memory_bytes: int = 1 << 30, cache_dir: Path | str | None = None) -> None:
        if memory_bytes < 0:
            raise ValueError(f"FeatureCache memory_bytes must be >= 0, got {memory_bytes}")
        self.memory_bytes = int(memory_bytes)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._lock = threading.RLock()
        self._memory: OrderedDict[CacheKey, tuple[Any, int]] = OrderedDict()
        self._used = 0
        self.hits = 0
        self.disk_hits = 0
        self.misses = 0

    # -- memory level ----------------------------------------------------------------------------
    @property
    def memory_used(self) -> int:
        return self._used

    def __len__(self) -> int:
        return len(self._memory)

    def _remember(self, key: CacheKey, value: Any) -> None:
        size = tree_nbytes(value)
        with self._lock:
            old = self._memory.pop(key, None)
            if old is not None:
                self._used -= old[1]
            if size > self.memory_bytes:
                return
            self._memory[key] = (value, size)
            self._used += size
            while self._used > self.memory_bytes and self._memory:
                _, (_, dropped) = self._memory.popitem(last=False)
                self._used -= dropped

    def clear_memory(self) -> None:
        """Drop the in-memory level (the disk level stays)."""
        with self._lock:
            self._memory.clear()
            self._used = 0

    # -- disk level ------------------------------------------------------------------------------
    def _path(self, key: CacheKey) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key.relpath()

    def entry_path(self, key: CacheKey) -> Path | None:
        """Where ``key``'s value lives on disk (it may not exist yet); ``None`` without a ``cache_dir``.
        Other processes' work on it is marked beside it (``workers.engine.core.inflight``)."""
        return self._path(key)

    def _read_disk(self, key: CacheKey) -> Any | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            return _decode(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # a corrupt or foreign file is a miss, never a crash
            log.warning("ignoring unreadable cache file %s: %s", path, exc)
            return None

    def _write_disk(self, key: CacheKey, value: Any) -> None:
        path = self._path(key)
        if path is None:
            return
        encoded = _encode(value, key.kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(encoded, handle)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- public ----------------------------------------------------------------------------------
    def get(self, key: CacheKey) -> Any | None:
        """The value for ``key`` from memory, else from disk (promoted), else ``None``."""
        with self._lock:
            entry = self._memory.get(key)
            if entry is not None:
                self._memory.move_to_end(key)
                self.hits += 1
                return entry[0]
        value = self._read_disk(key)
        if value is None:
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self.disk_hits += 1
        self._remember(key, value)
        return value

    def put(self, key: CacheKey, value: Any, *, persist: bool = True) -> None:
        """Store ``value`` in memory and, when ``persist`` and a ``cache_dir`` is set, on disk."""
        if persist:
            self._write_disk(key, value)
        else:
            _encode(value, key.kind)  # the same type rules for both levels
        self._remember(key, value)

    def get_or_compute(self, key: CacheKey, compute: Callable[[], T], *, persist: bool = True) -> T:
        """The cached value, or ``compute()``'s result after storing it."""
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value, persist=persist)
        return value

    def contains(self, key: CacheKey) -> bool:
        with self._lock:
            if key in self._memory:
                return True
        path = self._path(key)
        return path is not None and path.is_file()


def cache_params(
    *,
    models: Mapping[str, str] | None = None,
    masks: Proposals | None = None,
    settings: Mapping[str, Any] | Any | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """What a cached value depends on, as one JSON-able mapping (hashed by :func:`config_hash`).

    Args:
        models: role -> model fingerprint (``ModelHub.fingerprint(name)``), e.g. ``{"clip": "3f2a..."}``.
        masks: the proposals the value covers (their ``digest()``).
        settings: the settings that change the value (a mapping, or a config with ``to_dict()``).
        extra: anything else the value depends on (a prompt, a token index, a ramp direction).
    """
    params: dict[str, Any] = {}
    if models:
        params["models"] = dict(models)
    if masks is not None:
        params["masks"] = masks.digest()
    if settings is not None:
        params["settings"] = settings.to_dict() if hasattr(settings, "to_dict") else dict(settings)
    params.update(extra)
    return params


@dataclass
class ImageContext:
    """One image and its per-image cache, as every pipeline sees it.

    Attributes:
        image: the decoded image (``rgb`` ``H x W x 3`` uint8, ``sha256``).
        cache: the per-image cache (shared by every pipeline and every expression).
        meter: where stages and model calls are counted.
        progress: ``progress(stage, done, total)``, called by long image work between its units (the
            automatic mask generator: ``("proposals", points done, points in all)``); it may raise to stop
            the work (a cancelled job), and nothing half-done is cached then. ``None``: nobody listens.
    """

    image: ImageInput
    cache: FeatureCache = field(default_factory=lambda: FeatureCache(memory_bytes=256 << 20))
    meter: Meter = field(default_factory=Meter)
    progress: Callable[[str, int, int], None] | None = None

    def report(self, stage: str, done: int, total: int) -> None:
        """Tell ``progress`` (if any) that ``done`` of ``total`` units of ``stage`` are done."""
        if self.progress is not None:
            self.progress(stage, done, total)

    @property
    def sha256(self) -> str:
        return self.image.sha256

    @property
    def rgb(self) -> np.ndarray:
        """``H x W x 3`` uint8 RGB."""
        return self.image.rgb

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.image.height, self.image.width

    def key(self, kind: str, params: Mapping[str, Any]) -> CacheKey:
        return CacheKey.of(self.image.sha256, kind, params)

    def cached(
        self, kind: str, params: Mapping[str, Any], compute: Callable[[], T], *, persist: bool = True
    ) -> T:
        """The cached value of ``(this image, kind, params)`` or ``compute()``'s, stored for next time.

        ``params`` comes from :func:`cache_params`; ``compute`` must return a tensor tree.
        """
        return self.cache.get_or_compute(self.key(kind, params), compute, persist=persist)
