"""``OracleConfig`` (torch-free, as every pipeline config must be)."""

from __future__ import annotations

from dataclasses import dataclass

from workers.engine.core.config import Config, setting


@dataclass(frozen=True)
class OracleConfig(Config):
    """Settings of the colour oracle."""

    tolerance: int = setting(60, low=0, high=255, doc="largest per-channel distance from the named colour")
