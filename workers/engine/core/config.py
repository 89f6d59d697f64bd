"""Configs as data: frozen dataclasses whose fields carry their type, bounds, choices and meaning.

Every pipeline config and every sub-config (``amg``, ``features``, ``caption``, ``noising``, ...) is a
:class:`Config`. A field is declared with :func:`setting`, which records its bounds and a one-line meaning in
the field's metadata, so one description serves four readers:

- :meth:`Config.from_dict` builds a config from JSON-able data over a base (the defaults, or another config):
  unknown keys, wrong types and values out of bounds raise :class:`ConfigError` naming the dotted key
  (``"amg.points_per_side"``); a nested mapping is merged key by key into the base's sub-config, so
  ``{"amg": {"points_per_side": 8}}`` changes one generator setting and keeps the others;
- :meth:`Config.validate` checks the bounds of every field (also when a config is built in code) and then
  the cross-field rules of :meth:`Config.check`;
- :meth:`Config.to_dict` gives the JSON-able dict a job stores (round-trips through ``from_dict``);
- :meth:`Config.schema` gives a JSON Schema (types, bounds, enums, defaults, descriptions) for the API's
  documentation and for validating a request at the door.

A field whose type is a ``Config`` subclass is a sub-config. A field marked ``model=<family>`` names a model
of the store; profiles map such names to their stand-ins (``workers.engine.store.catalogue``).

This module is torch-free: the web process imports configs to validate job requests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from workers.engine.core.errors import ConfigError

C = TypeVar("C", bound="Config")


def config_hash(params: Mapping[str, Any]) -> str:
    """A 16-hex-digit hash of a JSON-able mapping (key order does not matter): cache keys, wrapper keys."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _json_default(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, set | frozenset):
        return sorted(value)
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"config_hash cannot hash a {type(value).__name__}: {value!r}")


_MISSING = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    *,
    default_factory: Any = _MISSING,
    low: float | None = None,
    high: float | None = None,
    choices: Sequence[Any] | None = None,
    doc: str = "",
    model: str | None = None,
    extra_choices: Sequence[str] = (),
) -> Any:
    """A config field with its bounds (inclusive ``low`` / ``high``; for a list, of each item), its allowed
    ``choices``, a one-line ``doc``, and for a model name the store ``model`` family it names (``"sam"``,
    ``"clip"``, ...; ``extra_choices`` are non-model values also accepted, e.g. ``"attention"``)."""
    metadata = {
        "low": low,
        "high": high,
        "choices": tuple(choices) if choices is not None else None,
        "doc": doc,
        "model": model,
        "extra_choices": tuple(extra_choices),
    }
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def sub_config(cls: type[Config], *, default: Config | None = None, doc: str = "") -> Any:
    """A nested config field of type ``cls``; its default is ``default`` (a ``cls``) or ``cls()``."""
    factory = cls if default is None else (lambda: default)
    return dataclasses.field(default_factory=factory, metadata={"doc": doc, "sub": True})


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if origin in (tuple, list):
        return "list"
    return {int: "integer", float: "number", bool: "true or false", str: "string", dict: "mapping"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against a simple type hint; an int is a float, an integral float an int, a list a tuple."""
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
        raise ConfigError(f"config key {key!r} must be {_type_name(hint)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
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
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return value
    return value


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    return value


def _is_config_type(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Config)


@dataclass(frozen=True)
class Config:
    """Base of every config; see the module docstring. Subclasses are frozen dataclasses of :func:`setting` and
    :func:`sub_config` fields and may override :meth:`check` for rules between fields."""

    #: A short name for messages and schemas (defaults to the class name).
    config_name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check each field's bounds and choices, then :meth:`check`.

        Raises:
            ConfigError: naming the key and the allowed range or choices.
        """
        for f in dataclasses.fields(self):
            meta = f.metadata
            value = getattr(self, f.name)
            if value is None or meta.get("sub"):
                continue
            items = value if isinstance(value, tuple | list) else (value,)
            for item in items:
                self._check_bounds(f.name, item, meta)
        self.check()

    @staticmethod
    def _check_bounds(key: str, value: Any, meta: Mapping[str, Any]) -> None:
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"config key {key!r} must be one of {list(choices)}, got {value!r}")
        low, high = meta.get("low"), meta.get("high")
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if numeric and ((low is not None and value < low) or (high is not None and value > high)):
            bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
            raise ConfigError(f"config key {key!r} must be in {bounds}, got {value!r}")
        family = meta.get("model")
        if family and isinstance(value, str) and value not in meta.get("extra_choices", ()):
            from workers.engine.store.catalogue import models_of_family

            known = models_of_family(family)
            if value not in known:
                extra = list(meta.get("extra_choices", ()))
                raise ConfigError(
                    f"config key {key!r} must name a {family} model of the store catalogue, got {value!r}; "
                    f"known: {', '.join([*known, *extra])}"
                )

    def check(self) -> None:
        """Rules between fields (subclasses); raise ``ConfigError`` naming the keys."""

    # -- data ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (sub-configs as dicts, tuples as lists)."""
        return {f.name: _to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(
        cls: type[C], data: Mapping[str, Any] | None, *, base: C | None = None, prefix: str = ""
    ) -> C:
        """Build from a (possibly partial) mapping over ``base`` (or the class defaults).

        Raises:
            ConfigError: an unknown key, a value of the wrong type or out of bounds; the message names the
                dotted key (``prefix`` is prepended, e.g. ``"amg."``).
        """
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            where = prefix.rstrip(".") or "the config"
            raise ConfigError(f"config key {where!r} must be a mapping, got {data!r}")
        hints = typing.get_type_hints(cls)
        names = cls.field_names()
        unknown = sorted(str(k) for k in set(data) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown config key {prefix + unknown[0]!r}; known keys{' of ' + prefix.rstrip('.') if prefix else ''}"
                f" are: {', '.join(names)}"
            )
        start = base if base is not None else cls()
        values = {}
        for name, value in data.items():
            hint = hints[name]
            current = getattr(start, name)
            if _is_config_type(hint):
                values[name] = hint.from_dict(value, base=current, prefix=f"{prefix}{name}.")
                continue
            coerced = _coerce(prefix + name, value, hint)
            if isinstance(coerced, dict) and isinstance(current, dict):
                coerced = {**current, **coerced}  # a mapping field is merged key by key
            values[name] = coerced
        try:
            return dataclasses.replace(start, **values)
        except ConfigError as error:
            raise _prefixed(error, prefix) from None

    def merged(self: C, overrides: Mapping[str, Any] | None) -> C:
        """This config with ``overrides`` applied (validated as :meth:`from_dict` does)."""
        return type(self).from_dict(overrides, base=self)

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with ``changes`` (Python values, sub-configs as configs)."""
        return dataclasses.replace(self, **changes)

    # -- introspection -----------------------------------------------------------------------------------
    @classmethod
    def model_fields(cls, prefix: str = "") -> Iterator[tuple[str, str]]:
        """``(dotted key, family)`` of every field naming a store model, sub-configs included."""
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if _is_config_type(hints[f.name]):
                yield from hints[f.name].model_fields(f"{prefix}{f.name}.")
            elif f.metadata.get("model"):
                yield prefix + f.name, f.metadata["model"]

    @classmethod
    def schema(cls) -> dict[str, Any]:
        """A JSON Schema (draft 2020-12 subset) of this config: every key with its type, bounds, choices,
        default and meaning; unknown keys are not allowed."""
        hints = typing.get_type_hints(cls)
        defaults = cls()
        properties: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if _is_config_type(hint):
                sub = _with_defaults(hint.schema(), getattr(defaults, f.name).to_dict())
                if f.metadata.get("doc"):
                    sub["description"] = f.metadata["doc"]
                properties[f.name] = sub
                continue
            prop = _json_type(hint)
            meta = f.metadata
            bounded = prop["items"] if prop.get("type") == "array" and "items" in prop else prop
            if meta.get("low") is not None:
                bounded["minimum"] = meta["low"]
            if meta.get("high") is not None:
                bounded["maximum"] = meta["high"]
            if meta.get("choices") is not None:
                bounded["enum"] = list(meta["choices"])
            if meta.get("doc"):
                prop["description"] = meta["doc"]
            if meta.get("model"):
                prop["x-model-family"] = meta["model"]
            prop["default"] = _to_jsonable(getattr(defaults, f.name))
            properties[f.name] = prop
        schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        if cls.__doc__:
            schema["title"] = cls.config_name or cls.__name__
            schema["description"] = cls.__doc__.strip().splitlines()[0]
        return schema


def _with_defaults(schema: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with each property's default set from ``values`` (a parent's default for its sub-config,
    e.g. TAS's 8 points per side rather than the generator's own 32)."""
    for key, prop in schema.get("properties", {}).items():
        if key not in values:
            continue
        if prop.get("type") == "object" and isinstance(values[key], Mapping):
            _with_defaults(prop, values[key])
        else:
            prop["default"] = values[key]
    return schema


def _json_type(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        inner = _json_type(options[0]) if len(options) == 1 else {"anyOf": [_json_type(h) for h in options]}
        if type(None) in typing.get_args(hint):
            kind = inner.get("type")
            if isinstance(kind, str):
                inner["type"] = [kind, "null"]
            else:
                inner = {"anyOf": [inner, {"type": "null"}]}
        return inner
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return {"type": "array", "items": _json_type(args[0]) if args else {}}
    if origin is dict or hint is dict:
        return {"type": "object"}
    return {
        int: {"type": "integer"},
        float: {"type": "number"},
        bool: {"type": "boolean"},
        str: {"type": "string"},
    }.get(hint, {})


def _prefixed(error: ConfigError, prefix: str) -> ConfigError:
    """The same error with ``prefix`` put before the key it names (``"config key 'x'"`` -> ``'amg.x'``)."""
    if not prefix:
        return error
    text = str(error)
    marker = "config key '"
    if marker in text and not text.split(marker, 1)[1].startswith(prefix):
        text = text.replace(marker, marker + prefix, 1)
    return ConfigError(text)
