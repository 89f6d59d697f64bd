"""The model store on disk: ``$RIS_MODEL_DIR/manifest.json`` and one folder per model.

Layout::

    $RIS_MODEL_DIR/
        manifest.json            {"version": 1, "models": {NAME: entry}}
        NAME/...                 the model's files; entry["files"] maps paths relative to NAME/ to sha256

An entry (``ModelEntry``) holds ``family``, ``format``, ``profile``, ``arch`` (builder arguments),
``files`` ({relpath: sha256}) and ``source`` (hub repo and revision, package resource, or tiny seed).

The manifest is rewritten atomically (temporary file + ``os.replace``) under an exclusive lock on
``manifest.lock``, so two processes recording models at once (a test session and ``make run``) never
lose each other's entries. Readers reload it whenever its mtime changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from workers.engine.core.errors import ModelStoreError
from workers.engine.store.catalogue import FAMILIES, FORMATS, MODEL_TIERS, get_command
from workers.engine.store.checksum import cached_sha256

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"

Status = Literal["present", "missing", "checksum-mismatch"]


@dataclass(frozen=True)
class ModelEntry:
    """One manifest entry. ``files`` paths are relative to ``ModelStore.path(name)``."""

    name: str
    family: str
    format: str
    profile: str
    arch: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The entry as stored under ``manifest["models"][name]``."""
        return {
            "family": self.family,
            "format": self.format,
            "profile": self.profile,
            "arch": dict(self.arch),
            "files": dict(sorted(self.files.items())),
            "source": dict(self.source),
        }

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> ModelEntry:
        """Parse and check one stored entry; ``ModelStoreError`` names the field at fault."""
        if not isinstance(data, dict):
            raise ModelStoreError(f"manifest entry {name!r} is not an object")
        for key, allowed in (("family", FAMILIES), ("format", FORMATS), ("profile", MODEL_TIERS)):
            if data.get(key) not in allowed:
                raise ModelStoreError(
                    f"manifest entry {name!r} has {key} {data.get(key)!r}; expected one of {', '.join(allowed)}"
                )
        files = data.get("files", {})
        if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in files.items()
        ):
            raise ModelStoreError(f"manifest entry {name!r} has 'files' that is not a map of path to sha256")
        for rel in files:
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise ModelStoreError(f"manifest entry {name!r} lists a file outside its folder: {rel!r}")
        return cls(
            name=name,
            family=data["family"],
            format=data["format"],
            profile=data["profile"],
            arch=dict(data.get("arch", {})),
            files=dict(files),
            source=dict(data.get("source", {})),
        )


@dataclass(frozen=True)
class Manifest:
    """The whole manifest: a version and the entries by name."""

    version: int = MANIFEST_VERSION
    models: dict[str, ModelEntry] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "models": {name: self.models[name].to_json() for name in sorted(self.models)},
        }

    @classmethod
    def from_json(cls, data: Any, *, where: str = MANIFEST_NAME) -> Manifest:
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise ModelStoreError(f"{where} is not a model manifest (no 'models' object)")
        version = data.get("version")
        if version != MANIFEST_VERSION:
            raise ModelStoreError(
                f"{where} has version {version!r}; this code reads version {MANIFEST_VERSION}"
            )
        return cls(version, {name: ModelEntry.from_json(name, e) for name, e in data["models"].items()})


class ModelStore:
    """A folder of models with a manifest. Pipelines name models; only the store knows paths.

    ``status`` and ``verify`` hash each file at most once per process while its size and mtime are
    unchanged (see ``checksum.cached_sha256``).
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.manifest_path = self.root / MANIFEST_NAME
        self._lock = threading.RLock()
        self._manifest: Manifest | None = None
        self._manifest_stamp: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    # manifest ------------------------------------------------------------------------------------
    def _read_manifest(self) -> Manifest:
        if not self.manifest_path.exists():
            return Manifest()
        try:
            with self.manifest_path.open(encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ModelStoreError(
                f"{self.manifest_path} is not valid JSON ({exc}); remove it and run `python manage.py models ensure`"
            ) from exc
        return Manifest.from_json(data, where=str(self.manifest_path))

    @property
    def manifest(self) -> Manifest:
        """The manifest as on disk now (reloaded when the file changes; empty when there is none)."""
        with self._lock:
            try:
                stat = self.manifest_path.stat()
                stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
            except FileNotFoundError:
                stamp = None
            if self._manifest is None or stamp != self._manifest_stamp:
                self._manifest = self._read_manifest()
                self._manifest_stamp = stamp
            return self._manifest

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.root / "manifest.lock", "a+") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def _write_manifest(self, manifest: Manifest) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=self.root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(manifest.to_json(), f, indent=2, sort_keys=False)
                f.write("\n")
            os.replace(tmp, self.manifest_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._manifest = None

    def record(self, entry: ModelEntry) -> None:
        """Add or replace ``entry`` in the manifest (atomic, locked across processes)."""
        with self._locked():
            current = self._read_manifest()
            models = dict(current.models)
            models[entry.name] = entry
            self._write_manifest(Manifest(MANIFEST_VERSION, models))

    def forget(self, name: str) -> None:
        """Remove ``name``'s entry from the manifest (its files stay)."""
        with self._locked():
            current = self._read_manifest()
            if name in current.models:
                models = {k: v for k, v in current.models.items() if k != name}
                self._write_manifest(Manifest(MANIFEST_VERSION, models))

    # lookup -------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Names recorded in the manifest, sorted."""
        return sorted(self.manifest.models)

    def has(self, name: str) -> bool:
        """Whether the manifest records ``name`` (its files may still be missing or damaged)."""
        return name in self.manifest.models

    def entry(self, name: str) -> ModelEntry:
        """The manifest entry of ``name``; ``ModelStoreError`` with the command that gets it if absent."""
        entry = self.manifest.models.get(name)
        if entry is None:
            raise ModelStoreError(
                f"model {name!r} is not in the model store at {self.root} "
                f"(no entry in {self.manifest_path.name}); get it with: {get_command(name)}"
            )
        return entry

    def path(self, name: str) -> Path:
        """The folder that holds ``name``'s files (it need not exist yet)."""
        if not name or "/" in name or name.startswith("."):
            raise ModelStoreError(f"{name!r} is not a model name")
        return self.root / name

    def file(self, name: str, relpath: str) -> Path:
        """Absolute path of one of ``name``'s files."""
        return self.path(name) / relpath

    # checks ----------------------------------------------------------------------------------------
    def _problems(self, entry: ModelEntry) -> tuple[Status, str | None]:
        folder = self.path(entry.name)
        for rel, expected in sorted(entry.files.items()):
            full = folder / rel
            try:
                actual = cached_sha256(full)
            except FileNotFoundError:
                return "missing", f"file {full} of model {entry.name!r} is missing"
            if actual != expected:
                return "checksum-mismatch", (
                    f"file {full} of model {entry.name!r} fails its sha256 check "
                    f"(expected {expected}, found {actual}): it is damaged or was replaced"
                )
        if entry.format == "python_package":
            import importlib.util

            module = entry.source.get("module", "")
            if not module or importlib.util.find_spec(module) is None:
                return "missing", f"Python package module {module!r} of model {entry.name!r} is not installed"
        return "present", None

    def status(self, name: str) -> Status:
        """``"present"``, ``"missing"`` (no entry or a file absent) or ``"checksum-mismatch"``."""
        entry = self.manifest.models.get(name)
        if entry is None:
            return "missing"
        return self._problems(entry)[0]

    def verify(self, name: str) -> ModelEntry:
        """Check every file of ``name`` against its sha256 and return the entry.

        Raises ``ModelStoreError`` naming the first missing or wrong file and the command that gets it
        (``python manage.py models fetch NAME`` or ``python manage.py models make-tiny``).
        """
        entry = self.entry(name)
        status, problem = self._problems(entry)
        if status != "present":
            command = get_command(name)
            if status == "checksum-mismatch" and command.endswith("make-tiny"):
                command += " --force"
            raise ModelStoreError(f"{problem}; get it with: {command}")
        return entry

    def size_bytes(self, name: str) -> int:
        """Bytes on disk of ``name``'s recorded files that exist."""
        entry = self.manifest.models.get(name)
        if entry is None:
            return 0
        total = 0
        for rel in entry.files:
            with contextlib.suppress(FileNotFoundError):
                total += (self.path(name) / rel).stat().st_size
        return total

    def staging_folder(self, name: str) -> Path:
        """An empty hidden folder beside ``path(name)`` to write a model into before :meth:`install_folder`."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.root))

    def install_folder(self, name: str, staged: Path) -> None:
        """Move a fully written ``staged`` folder to ``path(name)``, replacing what was there (no half model
        is ever visible at the final place)."""
        final = self.path(name)
        if final.exists():
            old = final.with_name(f".old-{name}-{staged.name}")
            final.rename(old)
            staged.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staged.rename(final)
