"""The registry from pipeline name to pipeline class, and the model names of each profile.

A pipeline module registers its class with ``@register_pipeline("name")``. The built-in modules
(:data:`BUILTIN_MODULES`) are imported on first use of the registry, so ``list_pipelines()`` finds them
without the caller importing each one; a built-in module that does not exist yet is skipped.

Profiles name which stored models a default config uses: ``"paper"`` the papers' models, ``"tiny"`` the
random tiny stand-ins (wiring tests, laptops without the real weights). MobileSAM has real weights in the
store everywhere, so the tiny profile proposes masks with it rather than with the random ``sam_tiny``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from workers.engine.cache import FeatureCache
from workers.engine.errors import ConfigError, UnknownPipelineError
from workers.engine.meter import Meter
from workers.engine.pipelines.base import Pipeline, PipelineConfig

P = TypeVar("P", bound=type[Pipeline])

BUILTIN_MODULES = (
    "workers.engine.pipelines.global_local",
    "workers.engine.pipelines.tas",
    "workers.engine.pipelines.refdiff",
    "workers.engine.pipelines.lgd",
)

PROFILES = ("tiny", "paper")

#: For each profile, the model a paper-profile model name stands for (names not listed stay as they are).
PROFILE_MODELS: dict[str, dict[str, str]] = {
    "paper": {},
    "tiny": {
        "clip_vit_b_32": "clip_tiny",
        "clip_vit_b_16": "clip_tiny",
        "clip_rn50": "clip_tiny",
        "sam_vit_h": "mobile_sam",
        "sam_vit_l": "mobile_sam",
        "sam_vit_b": "mobile_sam",
        "blip2_opt_2_7b": "captioner_tiny",
        "llava_1_5_7b": "mllm_tiny",
        "smolvlm_256m": "mllm_tiny",
        "sd_1_5": "sd_tiny",
    },
}

_REGISTRY: dict[str, type[Pipeline]] = {}
_LOCK = threading.Lock()
_BUILTINS_LOADED = False


def model_for_profile(model_name: str, profile: str) -> str:
    """The model that stands for paper-profile ``model_name`` in ``profile``."""
    if profile not in PROFILE_MODELS:
        raise ConfigError(f"unknown model profile {profile!r}; known profiles are: {', '.join(PROFILES)}")
    return PROFILE_MODELS[profile].get(model_name, model_name)


def register_pipeline(name: str) -> Callable[[P], P]:
    """Class decorator: register a :class:`Pipeline` subclass under ``name`` (and set its ``name``)."""

    def decorate(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
            raise TypeError(f"@register_pipeline({name!r}) decorates Pipeline subclasses, not {cls!r}")
        with _LOCK:
            existing = _REGISTRY.get(name)
            if existing is not None and existing.__qualname__ != cls.__qualname__:
                raise ValueError(f"pipeline name {name!r} is already registered by {existing.__qualname__}")
            cls.name = name
            _REGISTRY[name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but something it imports is missing: say so
                raise
    _BUILTINS_LOADED = True


def list_pipelines() -> list[str]:
    """Names of every registered pipeline, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def pipeline_class(name: str) -> type[Pipeline]:
    """The class registered under ``name``; ``UnknownPipelineError`` listing the known names otherwise."""
    _load_builtins()
    cls = _REGISTRY.get(name)
    if cls is None:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownPipelineError(f"unknown pipeline {name!r}; known pipelines are: {known}")
    return cls


def default_config(name: str, profile: str = "paper") -> PipelineConfig:
    """The default config of pipeline ``name`` with the model names of ``profile``."""
    if profile not in PROFILE_MODELS:
        raise ConfigError(f"unknown model profile {profile!r}; known profiles are: {', '.join(PROFILES)}")
    return pipeline_class(name).default_config(profile)


def resolve_config(
    name: str, overrides: Mapping[str, Any] | PipelineConfig | None = None, profile: str = "paper"
) -> PipelineConfig:
    """The profile's defaults of ``name`` with ``overrides`` applied (a full config is taken as is)."""
    cls = pipeline_class(name)
    if isinstance(overrides, PipelineConfig):
        if not isinstance(overrides, cls.config_class):
            raise ConfigError(
                f"pipeline {name!r} needs a {cls.config_class.__name__}, got {type(overrides).__name__}"
            )
        return overrides
    return default_config(name, profile).merged(overrides)


def build_pipeline(
    name: str,
    config: Mapping[str, Any] | PipelineConfig | None,
    hub: Any,
    cache: FeatureCache,
    meter: Meter,
    *,
    profile: str = "paper",
) -> Pipeline:
    """A ready pipeline: ``config`` is a full config, or overrides of the ``profile`` defaults."""
    cls = pipeline_class(name)
    return cls(resolve_config(name, config, profile), hub=hub, cache=cache, meter=meter)
