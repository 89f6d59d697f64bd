"""Ensemble: the rankings of several catalogued pipelines fused into one (docs/METHODS.md#ensemble).

Each member is built from the catalogue with its config (``EnsembleConfig.member_config``) on the engine's
hub, per-image cache and meter, so members share the cached image work (proposals, CLIP mask features) and
their model calls are counted in this pipeline's meter. ``prepare`` prepares every member; ``predict`` asks
every member for the full ranking of each expression and fuses them per expression
(:func:`workers.engine.methods.ensemble.fusion.fuse`). ``peer_compat`` is not applicable.
"""

from __future__ import annotations

from workers.engine.core.cache import ImageContext
from workers.engine.core.types import Candidate
from workers.engine.methods.base import Pipeline
from workers.engine.methods.ensemble.config import EnsembleConfig
from workers.engine.methods.ensemble.fusion import fuse


class EnsemblePipeline(Pipeline):
    """Fuses its members' rankings; see the module docstring."""

    config_class = EnsembleConfig
    config: EnsembleConfig

    def members(self) -> dict[str, Pipeline]:
        """The member pipelines by name (built once per ensemble)."""
        built = getattr(self, "_members", None)
        if built is None:
            from workers.engine.methods.registry import pipeline_class

            built = {
                name: pipeline_class(name)(
                    self.config.member_config(name),
                    hub=self.hub,
                    cache=self.cache,
                    meter=self.meter,
                    name=name,
                )
                for name in self.config.members
            }
            self._members = built
        return built

    def _prepare(self, ctx: ImageContext) -> None:
        for member in self.members().values():
            member.prepare(ctx)

    def _predict(self, ctx: ImageContext, expressions: list[str]) -> list[list[Candidate]]:
        members = self.members()
        answers = {name: member.predict(ctx, expressions) for name, member in members.items()}
        names = list(members)
        c = self.config
        with self.meter.stage("fusion"):
            return [
                fuse(
                    [answers[name][e] for name in names],
                    names,
                    fusion=c.fusion,
                    rrf_k=c.rrf_k,
                    weights=c.weights,
                )
                for e in range(len(expressions))
            ]
