"""Every model the project knows by name, and the model profiles, as data (``catalogue.json`` beside this module).

Profiles (``"profiles"`` in the JSON): a profile names, for each model a pipeline's config asks for, the model
that stands in for it (``stand_ins``): ``tiny`` replaces CLIP, the captioner, the MLLMs and Stable Diffusion
by random-weight models and SAM by MobileSAM; ``cpu`` replaces the paper models by real laptop-size ones
(MobileSAM, CLIP ViT-B/16, BLIP base, SmolVLM-256M); ``paper`` replaces nothing. :func:`model_for_profile`
applies it. ``auto`` (the default) has no stand-ins of its own: it ``resolves_to`` ``paper`` or ``cpu`` by
the machine, and falls back to ``tiny`` for a pipeline whose models are not in the store
(``workers.engine.store.profiles`` decides; it needs the store, this module does not).

The catalogue says what a model *is* and where it comes from; the manifest of a store says what a
machine *has*. A catalogue entry has the manifest entry's keys less ``files`` (whose sha256 is only
known once a file is on disk), plus a one-line ``description``. Source kinds:

- ``{"kind": "hub", "repo", "revision", "files": [...]}`` or ``{..., "allow_patterns", "ignore_patterns"}``:
  a model hub repository; single files for checkpoints, a filtered snapshot for ``save_pretrained`` folders.
- ``{"kind": "package", "package", "module", "resource"?, "sha256"?}``: a file inside (or the whole of) an
  installed Python package.
- ``{"kind": "tiny", "seed"}``: random weights written by ``workers.engine.store.tiny.writers``.

A hub source with ``"gated": true`` (SAM 3) needs its licence accepted on the hub and a token: ``hf auth
login`` on the machine, or ``HF_TOKEN`` in the environment, which ``huggingface_hub`` reads itself; the
project never reads, stores or logs it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from workers.engine.core.errors import ConfigError, ModelStoreError

CATALOGUE_PATH = Path(__file__).with_name("catalogue.json")

FAMILIES = ("sam", "clip", "captioner", "mllm", "diffusion", "text", "sam3")
FORMATS = (
    "sam_checkpoint",
    "open_clip_checkpoint",
    "transformers_folder",
    "diffusers_folder",
    "python_package",
)
#: What a model entry's ``profile`` field says of the model itself (its size class), not an engine profile.
MODEL_TIERS = ("paper", "small", "tiny")
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
    for key, allowed in (("family", FAMILIES), ("format", FORMATS), ("profile", MODEL_TIERS)):
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
def _raw() -> dict[str, Any]:
    with CATALOGUE_PATH.open(encoding="utf-8") as f:
        return json.load(f)


@cache
def _load() -> dict[str, CatalogueEntry]:
    entries = {name: _parse(name, data) for name, data in _raw()["models"].items()}
    profiles = _raw()["profiles"]
    for profile, spec in profiles.items():
        targets = [*spec.get("resolves_to", {}).values(), *([spec["fallback"]] if "fallback" in spec else [])]
        for target in targets:
            if target not in profiles or "resolves_to" in profiles[target]:
                raise ModelStoreError(
                    f"profile {profile!r} resolves to {target!r}, which is not a plain profile"
                )
        for wanted, stand_in in spec.get("stand_ins", {}).items():
            if wanted not in entries or stand_in not in entries:
                raise ModelStoreError(
                    f"profile {profile!r} maps {wanted!r} to {stand_in!r}: both must be models"
                )
    return entries


def profile_names() -> list[str]:
    """The model profiles, in catalogue order (``auto``, ``paper``, ``cpu``, ``tiny``)."""
    return list(_raw()["profiles"])


def is_resolved_profile(profile: str) -> bool:
    """Whether ``profile`` is chosen per machine and store (``auto``) rather than a fixed model map."""
    return "resolves_to" in _profile(profile)


def profile_spec(profile: str) -> dict[str, Any]:
    """A copy of the catalogue's entry of ``profile`` (``description``, ``stand_ins`` or ``resolves_to``)."""
    return copy.deepcopy(_profile(profile))


def _profile(profile: str) -> dict[str, Any]:
    profiles = _raw()["profiles"]
    if profile not in profiles:
        raise ConfigError(f"unknown model profile {profile!r}; known profiles are: {', '.join(profiles)}")
    return profiles[profile]


def model_for_profile(model_name: str, profile: str) -> str:
    """The model that stands for ``model_name`` in ``profile`` (the name itself when none stands in).

    Raises:
        ConfigError: an unknown profile, or ``auto``, which names no models by itself (resolve it first with
            ``workers.engine.store.profiles.pipeline_profile``).
    """
    spec = _profile(profile)
    if "resolves_to" in spec:
        raise ConfigError(
            f"model profile {profile!r} is chosen per machine and model store; resolve it to one of "
            f"{', '.join(spec['resolves_to'].values())} first"
        )
    return str(spec.get("stand_ins", {}).get(model_name, model_name))


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


def models_of_family(family: str) -> list[str]:
    """Names of the catalogue's models of ``family`` (``"sam"``, ``"clip"``, ...), in catalogue order."""
    return [name for name, entry in _load().items() if entry.family == family]


def catalogue_has(name: str) -> bool:
    """Whether ``name`` is a model of the catalogue (a config may also hold non-model values, e.g. ``"attention"``)."""
    return name in _load()
