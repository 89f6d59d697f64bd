"""The engine's settings, read from the environment in one place, by Django and by the engine alike.

Django's settings module builds ``RIS_ENGINE = EngineSettings.from_env()`` and takes its paths from it; a
worker, the benchmark command and the model commands hand that same object to ``Engine``. So the web process
and every worker agree on the model store, the cache and the profile, however they were started.

Paths: a relative value is taken from the project root (never from the working directory), so ``make run``
and a worker started from another folder read the same store. Defaults live under ``$RIS_VAR_DIR``
(``var/`` in the project root).

This module is torch-free (the web process imports it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from workers.engine.core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[3]

_OFF = ("", "none", "off")


def project_path(raw: str | os.PathLike[str]) -> Path:
    """``raw`` as an absolute path: ``~`` expanded, a relative path taken from the project root."""
    path = Path(raw).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def env_path(environ: Mapping[str, str], name: str, default: Path) -> Path | None:
    """The path in ``environ[name]`` (see :func:`project_path`), ``default`` when unset, ``None`` when set to
    an empty value, ``none`` or ``off``."""
    raw = environ.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in _OFF:
        return None
    return project_path(raw)


def env_positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    """The positive integer in ``environ[name]`` (``default`` when unset or empty).

    Raises:
        ConfigError: naming the variable, for a value that is not a positive integer.
    """
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from exc
    if value <= 0:
        raise ConfigError(f"environment variable {name} must be positive, got {value}")
    return value


def var_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$RIS_VAR_DIR`` (default ``var/`` in the project root): where the embedded defaults keep their files."""
    env = os.environ if environ is None else environ
    return env_path(env, "RIS_VAR_DIR", PROJECT_ROOT / "var") or PROJECT_ROOT / "var"


@dataclass(frozen=True)
class EngineSettings:
    """How an engine is set up.

    Attributes:
        model_dir: the model store (``$RIS_MODEL_DIR``, default ``var/models``).
        cache_dir: the on-disk per-image cache, ``None`` for memory only (``$RIS_CACHE_DIR``, default
            ``var/cache``; empty, ``none`` or ``off`` for memory only).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (``$RIS_DEVICE``).
        profile: the model profile, a name of the store catalogue's ``profiles`` (``$RIS_MODEL_PROFILE``):
            ``auto`` (default: the real models the machine can run, stand-ins where they are not fetched yet;
            see ``workers.engine.store.profiles``), ``paper``, ``cpu`` or ``tiny``.
        model_memory_budget_mb: loaded models' parameter bytes cap (``$RIS_MODEL_MEMORY_MB``).
        cache_memory_mb: the in-memory cache's cap (``$RIS_CACHE_MEMORY_MB``).
        autocast: mixed precision on CUDA, ``off`` / ``bf16`` / ``fp16`` (``$RIS_AUTOCAST``; see
            :mod:`workers.engine.core.precision`).
    """

    model_dir: Path
    cache_dir: Path | None
    device: str = "auto"
    profile: str = "auto"
    model_memory_budget_mb: int = 8192
    cache_memory_mb: int = 1024
    autocast: str = "off"

    def __post_init__(self) -> None:
        from workers.engine.store.catalogue import profile_names

        if self.autocast not in ("off", "bf16", "fp16"):
            raise ConfigError(f"RIS_AUTOCAST must be off, bf16 or fp16, got {self.autocast!r}")
        if self.profile not in profile_names():
            raise ConfigError(f"model profile {self.profile!r} is not one of {', '.join(profile_names())}")
        if self.model_memory_budget_mb <= 0 or self.cache_memory_mb < 0:
            raise ConfigError("model_memory_budget_mb must be > 0 and cache_memory_mb >= 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EngineSettings:
        """Settings from ``RIS_MODEL_DIR``, ``RIS_CACHE_DIR``, ``RIS_DEVICE``, ``RIS_MODEL_PROFILE``,
        ``RIS_MODEL_MEMORY_MB``, ``RIS_CACHE_MEMORY_MB`` and ``RIS_AUTOCAST`` (see the attributes).

        Raises:
            ConfigError: naming the variable with a bad value.
        """
        env = os.environ if environ is None else environ
        base = var_dir(env)
        model_dir = env_path(env, "RIS_MODEL_DIR", base / "models")
        if model_dir is None:
            raise ConfigError("RIS_MODEL_DIR must name a folder")
        return cls(
            model_dir=model_dir,
            cache_dir=env_path(env, "RIS_CACHE_DIR", base / "cache"),
            device=env.get("RIS_DEVICE", "auto") or "auto",
            profile=env.get("RIS_MODEL_PROFILE", "auto").strip() or "auto",
            model_memory_budget_mb=env_positive_int(env, "RIS_MODEL_MEMORY_MB", 8192),
            cache_memory_mb=env_positive_int(env, "RIS_CACHE_MEMORY_MB", 1024),
            autocast=(env.get("RIS_AUTOCAST", "off") or "off").lower(),
        )

    def replace(self, **changes: Any) -> EngineSettings:
        """A validated copy with ``changes`` (e.g. ``device="cuda"`` from a command-line flag)."""
        return replace(self, **changes)
