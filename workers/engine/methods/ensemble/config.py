"""``EnsembleConfig``: which pipelines to combine and how (docs/METHODS.md#ensemble). Torch-free.

The members are other catalogued pipelines; their configs are the catalogue defaults of ``member_profile``
(the engine's model profile: the catalogue's ``profile_overrides`` set it to ``"tiny"`` under the tiny profile)
with ``member_configs[name]`` applied, and are checked here, at the door, like any job config.
``peer_compat`` is not applicable: no peer code fuses these pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.engine.core.config import Config, setting
from workers.engine.core.errors import ConfigError, UnknownPipelineError

#: How member rankings are fused (see ``workers.engine.methods.ensemble.fusion``).
FUSIONS = ("rrf", "minmax", "zscore")


@dataclass(frozen=True)
class EnsembleConfig(Config):
    """Settings of the ensemble pipeline."""

    config_name = "ensemble"

    members: tuple[str, ...] = setting(
        ("global_local", "tas"),
        doc="catalogued pipelines whose rankings are fused (at least one, no repeats)",
    )
    member_configs: dict = setting(
        default_factory=dict, doc="per member, overrides of its config, e.g. {'tas': {'lambda_': 0.5}}"
    )
    member_profile: str = setting("paper", doc="model profile the members' default configs are taken from")
    fusion: str = setting(
        "rrf", choices=FUSIONS, doc="rrf: reciprocal-rank fusion; minmax / zscore: normalised score average"
    )
    rrf_k: float = setting(60.0, low=0.0, high=10_000.0, doc="k of reciprocal-rank fusion, 1 / (k + rank)")
    weights: tuple[float, ...] | None = setting(
        None, low=0.0, high=1_000.0, doc="one weight per member (null: all 1)"
    )

    def check(self) -> None:
        from workers.engine.methods.catalogue import pipeline_entry
        from workers.engine.store.catalogue import profile_names

        if self.member_profile not in profile_names():
            raise ConfigError(
                f"config key 'member_profile' must be one of {profile_names()}, got {self.member_profile!r}"
            )
        if not self.members:
            raise ConfigError("config key 'members' is empty; name at least one pipeline")
        if len(set(self.members)) != len(self.members):
            raise ConfigError(f"config key 'members' repeats a pipeline: {list(self.members)}")
        if self.weights is not None and len(self.weights) != len(self.members):
            raise ConfigError(
                f"config key 'weights' has {len(self.weights)} values for {len(self.members)} members"
            )
        if self.weights is not None and not any(w > 0 for w in self.weights):
            raise ConfigError("config key 'weights' are all 0; give at least one member a positive weight")
        unknown = sorted(set(self.member_configs) - set(self.members))
        if unknown:
            raise ConfigError(f"config key 'member_configs' names {unknown}, which are not among 'members'")
        for name in self.members:
            try:
                entry = pipeline_entry(name)
            except UnknownPipelineError as exc:
                raise ConfigError(f"config key 'members': {exc}") from None
            if issubclass(entry.config_class(), EnsembleConfig):
                raise ConfigError(f"config key 'members': {name!r} is an ensemble; ensembles do not nest")
            self.member_config(name)

    def member_config(self, name: str) -> Config:
        """Member ``name``'s full config (``member_profile`` defaults + ``member_configs[name]``).

        Raises:
            ConfigError: the overrides are refused, naming ``member_configs.<name>.<key>``.
        """
        from workers.engine.methods.catalogue import pipeline_entry

        overrides: Any = self.member_configs.get(name)
        if overrides is not None and not isinstance(overrides, dict):
            raise ConfigError(f"config key 'member_configs.{name}' must be a mapping, got {overrides!r}")
        try:
            return pipeline_entry(name).resolve(overrides, self.member_profile)
        except ConfigError as exc:
            raise ConfigError(f"config key 'member_configs.{name}': {exc}") from None
