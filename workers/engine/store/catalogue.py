"""Every model the project knows by name, as data (``catalogue.json`` beside this module).

The catalogue says what a model *is* and where it comes from; the manifest of a store says what a
machine *has*. A catalogue entry has the manifest entry's keys less ``files`` (whose sha256 is only
known once a file is on disk), plus a one-line ``description``. Source kinds:

- ``{"kind": "hub", "repo", "revision", "files": [...]}`` or ``{..., "allow_patterns", "ignore_patterns"}``:
  a model hub repository; single files for checkpoints, a filtered snapshot for ``save_pretrained`` folders.
- ``{"kind": "package", "package", "module", "resource"?, "sha256"?}``: a file inside (or the whole of) an
  installed Python package.
- ``{"kind": "tiny", "seed"}``: random weights written by ``workers.engine.store.tiny``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from workers.engine.errors import ModelStoreError

CATALOGUE_PATH = Path(__file__).with_name("catalogue.json")

FAMILIES = ("sam", "clip", "captioner", "mllm", "diffusion", "text")
FORMATS = (
    "sam_checkpoint",
    "open_clip_checkpoint",
    "transformers_folder",
    "diffusers_folder",
    "python_package",
)
PROFILES = ("paper", "small", "tiny")
SOURCE_KINDS = ("hub", "package", "tiny")


@dataclass(frozen=True)
class CatalogueEntry:
    """What a named model is and where it comes from (see the module docstring)."""

    name: str
    family: str
    format: str
    profile: str
    description: str
    arch: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``"hub"``, ``"package"`` or ``"tiny"``."""
        return str(self.source["kind"])

    def get_command(self) -> str:
        """The shell command that puts this model into the store."""
        if self.kind == "tiny":
            return "python manage.py models make-tiny"
        return f"python manage.py models fetch {self.name}"


def _parse(name: str, data: dict[str, Any]) -> CatalogueEntry:
    for key, allowed in (("family", FAMILIES), ("format", FORMATS), ("profile", PROFILES)):
        if data.get(key) not in allowed:
            raise ModelStoreError(
                f"catalogue entry {name!r} has {key} {data.get(key)!r}; expected one of {allowed}"
            )
    if data.get("source", {}).get("kind") not in SOURCE_KINDS:
        raise ModelStoreError(f"catalogue entry {name!r} has an unknown source kind {data.get('source')!r}")
    return CatalogueEntry(
        name=name,
        family=data["family"],
        format=data["format"],
        profile=data["profile"],
        description=data.get("description", ""),
        arch=dict(data.get("arch", {})),
        source=dict(data["source"]),
    )


@cache
def _load() -> dict[str, CatalogueEntry]:
    with CATALOGUE_PATH.open(encoding="utf-8") as f:
        raw = json.load(f)
    return {name: _parse(name, data) for name, data in raw["models"].items()}


def catalogue() -> dict[str, CatalogueEntry]:
    """All known models by name, in catalogue order (a fresh copy: callers may not change the cache)."""
    return copy.deepcopy(_load())


def catalogue_entry(name: str) -> CatalogueEntry:
    """The catalogue entry of ``name``; ``ModelStoreError`` listing the known names if there is none."""
    entries = _load()
    if name not in entries:
        raise ModelStoreError(f"unknown model {name!r}; known models are: {', '.join(entries)}")
    return copy.deepcopy(entries[name])


def get_command(name: str) -> str:
    """The command that gets ``name`` into the store (``models list`` for a name nobody knows)."""
    entries = _load()
    if name in entries:
        return entries[name].get_command()
    return "python manage.py models list"
