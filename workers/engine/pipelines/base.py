"""What every pipeline is: a name, a frozen config as data, and ``predict(ctx, expressions)``.

- :class:`PipelineConfig`: a frozen dataclass whose defaults are the paper's (or the public code's)
  constants. ``to_dict``/``from_dict`` round-trip through JSON-able dicts (the job stores the dict);
  ``from_dict`` rejects an unknown key, a value of the wrong type and a value out of range with a
  ``ConfigError`` naming the key.
- :class:`ImageContext`: one image (``ImageInput``) with a handle on the per-image cache and the meter.
  Every image-level artefact is reached through :meth:`ImageContext.cached`, so a second expression on the
  same image finds it ready.
- :class:`Pipeline`: ``prepare(ctx)`` does the image-level work into the cache; ``predict(ctx, expressions)``
  returns one ranked candidate list per expression and shares the image work between them (so it *is*
  ``predict_batch``); ``predict_one(ctx, expression)`` is the single-expression form.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from workers.engine.cache import CacheKey, FeatureCache
from workers.engine.errors import ConfigError
from workers.engine.meter import Meter
from workers.engine.types import Candidate, ImageInput

C = TypeVar("C", bound="PipelineConfig")
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a simple type hint; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: {value!r} is not a {_type_name(hint)}")
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"config key {key!r} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        item_hint = args[0] if args else Any
        items = [_coerce(f"{key}[{i}]", v, item_hint) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return value
    return value


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class PipelineConfig:
    """Base of every pipeline's config. Subclasses add fields with defaults and override :meth:`validate`."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the key of a value out of range (types are checked by ``from_dict``)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (tuples as lists)."""
        return {f.name: _to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | None, *, base: C | None = None) -> C:
        """Build from a (possibly partial) dict over ``base`` (or the class defaults).

        A mapping-valued field is merged key by key into the base's mapping (``{"amg": {"points_per_side":
        8}}`` changes one generator setting and keeps the others).

        Raises:
            ConfigError: an unknown key, a value of the wrong type, or a value out of range; the message
                names the key.
        """
        data = dict(data or {})
        hints = typing.get_type_hints(cls)
        names = cls.field_names()
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown config key {unknown[0]!r} for {cls.__name__}; known keys are: {', '.join(names)}"
            )
        start = base if base is not None else cls()
        values = {}
        for name, value in data.items():
            coerced = _coerce(name, value, hints[name])
            current = getattr(start, name)
            if isinstance(coerced, dict) and isinstance(current, dict):
                coerced = {**current, **coerced}  # a mapping field is merged key by key
            values[name] = coerced
        return dataclasses.replace(start, **values)

    def merged(self: C, overrides: Mapping[str, Any] | None) -> C:
        """This config with ``overrides`` applied (validated as :meth:`from_dict` does)."""
        return type(self).from_dict(overrides, base=self)

    def check_range(self, key: str, low: float | None = None, high: float | None = None) -> None:
        """Helper for :meth:`validate`: ``low <= value <= high`` or a ``ConfigError`` naming ``key``."""
        value = getattr(self, key)
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
            raise ConfigError(f"config key {key!r} must be in {bounds}, got {value!r}")

    def check_choice(self, key: str, choices: Sequence[Any]) -> None:
        value = getattr(self, key)
        if value not in choices:
            raise ConfigError(f"config key {key!r} must be one of {list(choices)}, got {value!r}")


# ---------------------------------------------------------------------------------------------------
# Image context
# ---------------------------------------------------------------------------------------------------


@dataclass
class ImageContext:
    """One image and its per-image cache, as every pipeline sees it.

    Attributes:
        image: the decoded image (``rgb`` ``H x W x 3`` uint8, ``sha256``).
        cache: the per-image cache (shared by every pipeline and every expression).
        meter: where stages and model calls are counted.
    """

    image: ImageInput
    cache: FeatureCache = field(default_factory=lambda: FeatureCache(memory_bytes=256 << 20))
    meter: Meter = field(default_factory=Meter)

    @property
    def sha256(self) -> str:
        return self.image.sha256

    @property
    def rgb(self) -> Any:
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

        ``compute`` must return a tensor tree (see ``workers.engine.cache``).
        """
        return self.cache.get_or_compute(self.key(kind, params), compute, persist=persist)

    def has(self, kind: str, params: Mapping[str, Any]) -> bool:
        return self.cache.contains(self.key(kind, params))


# ---------------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------------


class Pipeline(ABC):
    """A named way of ranking masks for expressions.

    Subclasses set ``config_class`` and are registered with ``@register_pipeline(name)``, which sets
    ``name``. They are built by ``build_pipeline(name, config, hub, cache, meter)``.

    Args:
        config: the pipeline's frozen config.
        hub: the model hub (``hub.get(name)`` returns a loaded model); ``None`` for pipelines needing none.
        cache: the per-image cache shared with every pipeline.
        meter: the engine's meter.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[PipelineConfig]] = PipelineConfig

    def __init__(self, config: PipelineConfig, *, hub: Any, cache: FeatureCache, meter: Meter) -> None:
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"pipeline {self.name!r} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self.hub = hub
        self.cache = cache
        self.meter = meter

    @classmethod
    def default_config(cls, profile: str = "paper") -> PipelineConfig:
        """The paper's defaults with the model names of ``profile``; subclasses map their model fields."""
        return cls.config_class()

    def context(self, image: ImageInput) -> ImageContext:
        """An :class:`ImageContext` on this pipeline's cache and meter."""
        return ImageContext(image=image, cache=self.cache, meter=self.meter)

    def prepare(self, ctx: ImageContext) -> None:  # noqa: B027 - a no-op default is the right default
        """Do the image-level work into the cache (a pipeline with none does nothing)."""

    @abstractmethod
    def predict(self, ctx: ImageContext, expressions: Sequence[str]) -> list[list[Candidate]]:
        """One ranked candidate list (best first, ``rank`` 0..) per expression; all share the image work."""

    def predict_batch(self, ctx: ImageContext, expressions: Sequence[str]) -> list[list[Candidate]]:
        """Alias of :meth:`predict`: many expressions on one image."""
        return self.predict(ctx, expressions)

    def predict_one(self, ctx: ImageContext, expression: str) -> list[Candidate]:
        """The ranked candidates of one expression."""
        return self.predict(ctx, [expression])[0]
