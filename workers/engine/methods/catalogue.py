"""The pipelines the product offers, as data: ``catalogue.json`` beside this module, plus any extra catalogue
files named in ``$RIS_PIPELINE_CATALOGUES`` (paths separated by ``os.pathsep``). Torch-free: the web process
reads it to list pipelines, describe them and validate a job's config at the door.

An entry: ``title``, ``paper``, ``description`` (one line for people), ``needs`` (optional: one line on the
models and hardware it needs), ``pipeline`` and ``config`` as
``"module:Class"`` (the config module must be torch-free), and ``profile_overrides`` (per model profile, config
values that profile needs, e.g. the tiny diffusion model's input size). A new method is one package under
``workers/engine/methods/`` plus one entry here.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from workers.engine.core.config import Config
from workers.engine.core.errors import ConfigError, UnknownPipelineError
from workers.engine.store.catalogue import model_for_profile

CATALOGUE_PATH = Path(__file__).with_name("catalogue.json")
EXTRA_CATALOGUES_ENV = "RIS_PIPELINE_CATALOGUES"


@dataclass(frozen=True)
class PipelineEntry:
    """One pipeline of the catalogue (see the module docstring)."""

    name: str
    title: str
    paper: str
    description: str
    pipeline: str
    config: str
    profile_overrides: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    needs: str = ""
    #: Not part of a profile's first-use fetch or of the "stand-ins" notice (large or gated models): under
    #: ``auto`` it never falls back to stand-ins; a job whose models are missing fails at once, in words.
    opt_in: bool = False

    def config_class(self) -> type[Config]:
        """The pipeline's config class (imported from its torch-free module).

        Raises:
            ConfigError: the entry names a module or class that does not exist or is not a ``Config``.
        """
        cls = _import(self.config, f"pipeline {self.name!r} config")
        if not (isinstance(cls, type) and issubclass(cls, Config)):
            raise ConfigError(f"pipeline {self.name!r}: {self.config} is not a Config class ({self.source})")
        return cls

    def pipeline_class(self) -> type:
        """The pipeline's class (imports its module, which may need torch)."""
        return _import(self.pipeline, f"pipeline {self.name!r}")

    def default_config(self, profile: str = "paper") -> Config:
        """The config's defaults with ``profile``'s stand-ins for every model field and the profile's overrides.

        Raises:
            ConfigError: an unknown profile, or overrides the config refuses.
        """
        cls = self.config_class()
        defaults = cls()
        mapped: dict[str, Any] = {}
        for key, _family in cls.model_fields():
            value = defaults
            for part in key.split("."):
                value = getattr(value, part)
            target = mapped
            parts = key.split(".")
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = model_for_profile(str(value), profile)
        return defaults.merged(mapped).merged(self.profile_overrides.get(profile) or None)

    def resolve(self, overrides: Mapping[str, Any] | Config | None, profile: str = "paper") -> Config:
        """The full config: the profile's defaults with ``overrides`` applied (a full config is taken as is).

        Raises:
            ConfigError: an unknown key, a wrong type or a value out of bounds, naming the dotted key.
        """
        cls = self.config_class()
        if isinstance(overrides, Config):
            if not isinstance(overrides, cls):
                raise ConfigError(
                    f"pipeline {self.name!r} needs a {cls.__name__}, got {type(overrides).__name__}"
                )
            return overrides
        return self.default_config(profile).merged(overrides)

    def to_json(self) -> dict[str, Any]:
        """What the web app shows: name, title, paper, description, needs."""
        return {
            "name": self.name,
            "title": self.title,
            "paper": self.paper,
            "description": self.description,
            "needs": self.needs,
            "opt_in": self.opt_in,
        }

    def models(self, profile: str = "paper") -> list[tuple[str, str]]:
        """``(dotted config key, store model name)`` of every model the profile's default config names."""
        return config_models(self.default_config(profile))


def config_models(config: Config, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, model name)`` of every model field of ``config``; a config that combines other pipelines
    (``members`` and ``member_config(name)``, the ensemble) contributes its members' models as
    ``members.<name>.<key>``."""
    found = []
    for key, _family in type(config).model_fields():
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        found.append((prefix + key, str(value)))
    member_config = getattr(config, "member_config", None)
    for name in getattr(config, "members", ()) if callable(member_config) else ():
        found.extend(config_models(member_config(name), f"{prefix}members.{name}."))
    return found


def _import(target: str, what: str) -> Any:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"{what}: {target!r} must be 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{what}: cannot import {module_name} ({exc})") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"{what}: {module_name} has no {attribute}") from None


_REQUIRED = ("title", "description", "pipeline", "config")


def _read(path: Path) -> dict[str, PipelineEntry]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"pipeline catalogue {path} cannot be read: {exc}") from exc
    pipelines = raw.get("pipelines") if isinstance(raw, dict) else None
    if not isinstance(pipelines, dict):
        raise ConfigError(f"pipeline catalogue {path} has no 'pipelines' object")
    entries = {}
    for name, data in pipelines.items():
        missing = [k for k in _REQUIRED if not isinstance(data, dict) or not data.get(k)]
        if missing:
            raise ConfigError(f"pipeline catalogue {path}: entry {name!r} lacks {', '.join(missing)}")
        entries[name] = PipelineEntry(
            name=name,
            title=str(data["title"]),
            paper=str(data.get("paper", "")),
            description=str(data["description"]),
            pipeline=str(data["pipeline"]),
            config=str(data["config"]),
            profile_overrides=dict(data.get("profile_overrides") or {}),
            source=str(path),
            needs=str(data.get("needs", "")),
            opt_in=bool(data.get("opt_in", False)),
        )
    return entries


@cache
def _catalogue(extra: tuple[str, ...]) -> dict[str, PipelineEntry]:
    entries = _read(CATALOGUE_PATH)
    for raw_path in extra:
        for name, entry in _read(Path(raw_path)).items():
            if name in entries:
                raise ConfigError(f"pipeline {name!r} of {raw_path} is already in {entries[name].source}")
            entries[name] = entry
    return entries


def pipeline_catalogue() -> dict[str, PipelineEntry]:
    """Every pipeline by name: the built-in catalogue, then ``$RIS_PIPELINE_CATALOGUES`` in order."""
    extra = tuple(p for p in os.environ.get(EXTRA_CATALOGUES_ENV, "").split(os.pathsep) if p.strip())
    return dict(_catalogue(extra))


def pipeline_names() -> list[str]:
    """The pipelines' names, sorted."""
    return sorted(pipeline_catalogue())


def pipeline_entry(name: str) -> PipelineEntry:
    """The catalogue entry of ``name``.

    Raises:
        UnknownPipelineError: listing the known names.
    """
    entries = pipeline_catalogue()
    if name not in entries:
        raise UnknownPipelineError(
            f"unknown pipeline {name!r}; known pipelines are: {', '.join(sorted(entries))}"
        )
    return entries[name]


def resolve_config(
    name: str, overrides: Mapping[str, Any] | Config | None = None, profile: str = "paper"
) -> Config:
    """The full config of pipeline ``name`` for ``profile`` with ``overrides`` (torch-free; see
    :meth:`PipelineEntry.resolve`)."""
    return pipeline_entry(name).resolve(overrides, profile)


def default_config(name: str, profile: str = "paper") -> Config:
    """The defaults of pipeline ``name`` with the model names of ``profile``."""
    return pipeline_entry(name).default_config(profile)


def config_work(config: Config, prefix: str = "") -> dict[str, dict[str, int]]:
    """The estimated work per image of every sub-config that can tell (``work()``, e.g. ``AmgConfig``).

    Returns ``{measure: {dotted key of the sub-config: amount}}``, e.g.
    ``{"prompts": {"amg": 1024}, "embeddings": {"amg": 1}, "decoder_batches": {"amg": 16}}``. Torch-free.
    """
    totals: dict[str, dict[str, int]] = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if not isinstance(value, Config):
            continue
        key = f"{prefix}{item.name}"
        work = getattr(value, "work", None)
        if callable(work):
            for measure, amount in work().items():
                totals.setdefault(measure, {})[key] = int(amount)
        for measure, parts in config_work(value, prefix=f"{key}.").items():
            totals.setdefault(measure, {}).update(parts)
    return totals
