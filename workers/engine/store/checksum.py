"""sha256 of model files, remembered per process by ``(path, size, mtime)``.

Hashing a 2.5 GB SAM ViT-H checkpoint takes seconds, and a worker may load a model many times
(after an LRU eviction, say). The result is kept while the file's size and modification time are
unchanged, so a hot path pays one ``stat`` per file; a file rewritten in place gets a new mtime and is
hashed again.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

_CHUNK = 8 * 1024 * 1024
_lock = threading.Lock()
_cache: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of the file's bytes (no cache)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def cached_sha256(path: Path | str) -> str:
    """Hex sha256 of the file, hashed at most once per process while its size and mtime stay the same.

    Raises ``FileNotFoundError`` when the file does not exist.
    """
    key = _key(Path(path))
    with _lock:
        known = _cache.get(key)
    if known is not None:
        return known
    value = sha256_file(path)
    with _lock:
        _cache[key] = value
    return value


def clear_checksum_cache() -> None:
    """Forget every remembered digest (tests use it to prove a re-hash)."""
    with _lock:
        _cache.clear()


def hash_tree(folder: Path) -> dict[str, str]:
    """``{relpath: sha256}`` of every regular file under ``folder`` (POSIX relpaths, sorted).

    Hidden entries (names starting with ``.``, e.g. a hub client's ``.cache``) are left out.
    """
    files: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            full = Path(dirpath) / filename
            files[full.relative_to(folder).as_posix()] = cached_sha256(full)
    return files
