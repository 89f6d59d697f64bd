"""What every pipeline is: a name, a frozen config, and ``predict(ctx, expressions)`` over the per-image cache.

:class:`Pipeline` follows SAM's set-once / query-many shape, extended to every model: ``prepare(ctx)`` does an
image's image-level work into the cache (proposals, per-mask features, captions), and ``predict(ctx,
expressions)`` ranks the image's masks for each expression, reading the image-level work back, so a second
expression on an image costs only its own text work. Subclasses implement ``_predict`` and may implement
``_prepare``; the public methods activate the pipeline's meter around them so model calls made by wrappers
the hub shares are counted here (``workers.engine.core.meter.current_meter``).

Pipelines are built from the torch-free catalogue (``workers.engine.methods.catalogue``) by
``workers.engine.methods.registry``; a pipeline holds its config, the model hub, the cache and the meter, and
never a model: models and the wrappers built on them belong to the hub.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from workers.engine.core.cache import FeatureCache, ImageContext
from workers.engine.core.config import Config
from workers.engine.core.errors import BadInputError, ConfigError
from workers.engine.core.meter import Meter
from workers.engine.core.types import Candidate, ImageInput


class Pipeline(ABC):
    """A named way of ranking masks for expressions.

    Args:
        config: the pipeline's frozen config (an instance of ``config_class``).
        name: the catalogue name it was built under (messages).
        hub: the model hub (``hub.get(name)``, ``hub.wrapper(...)``, ``hub.fingerprint(name)``).
        cache: the per-image cache shared with every pipeline.
        meter: where this pipeline's stages and model calls are counted.

    Raises:
        ConfigError: a config of another class.
    """

    config_class: ClassVar[type[Config]] = Config

    def __init__(
        self, config: Config, *, hub: Any, cache: FeatureCache, meter: Meter, name: str = ""
    ) -> None:
        self.name = name or type(self).__name__
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"pipeline {self.name!r} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self.hub = hub
        self.cache = cache
        self.meter = meter

    def context(self, image: ImageInput) -> ImageContext:
        """An :class:`ImageContext` on this pipeline's cache and meter."""
        return ImageContext(image=image, cache=self.cache, meter=self.meter)

    def prepare(self, ctx: ImageContext) -> None:
        """Do the image-level work into the cache (a pipeline with none does nothing)."""
        with self.meter.active():
            self._prepare(ctx)

    def predict(self, ctx: ImageContext, expressions: Sequence[str]) -> list[list[Candidate]]:
        """One ranked candidate list (best first, ``rank`` 0..) per expression; all share the image work.

        Raises:
            BadInputError: ``expressions`` is a single string, or an expression is empty.
        """
        if isinstance(expressions, str):
            raise BadInputError("expressions must be a list of strings, not a single string")
        expressions = list(expressions)
        if not expressions:
            return []
        with self.meter.active():
            return self._predict(ctx, expressions)

    def _prepare(self, ctx: ImageContext) -> None:  # noqa: B027 - a no-op default is the right default
        """Image-level work (subclasses)."""

    @abstractmethod
    def _predict(self, ctx: ImageContext, expressions: list[str]) -> list[list[Candidate]]:
        """Rank for a non-empty list of expressions (subclasses)."""
