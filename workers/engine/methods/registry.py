"""Build pipelines from the catalogue: ``build_pipeline(name, config, hub, cache, meter, profile=...)``.

The catalogue (``workers.engine.methods.catalogue``) names each pipeline's class; this module imports it (with
torch) only when a pipeline is built and checks it is a :class:`~workers.engine.methods.base.Pipeline` whose
``config_class`` is the catalogue's config. One class may serve several catalogue names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workers.engine.core.cache import FeatureCache
from workers.engine.core.config import Config
from workers.engine.core.errors import ConfigError
from workers.engine.core.meter import Meter
from workers.engine.methods.base import Pipeline
from workers.engine.methods.catalogue import pipeline_entry


def pipeline_class(name: str) -> type[Pipeline]:
    """The class of pipeline ``name``.

    Raises:
        UnknownPipelineError: ``name`` is in no catalogue.
        ConfigError: the entry's class is not a ``Pipeline`` of the entry's config class.
    """
    entry = pipeline_entry(name)
    cls = entry.pipeline_class()
    if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
        raise ConfigError(f"pipeline {name!r}: {entry.pipeline} is not a Pipeline class ({entry.source})")
    if cls.config_class is not entry.config_class():
        raise ConfigError(
            f"pipeline {name!r}: {entry.pipeline} takes {cls.config_class.__name__}, the catalogue says {entry.config}"
        )
    return cls


def build_pipeline(
    name: str,
    config: Mapping[str, Any] | Config | None,
    hub: Any,
    cache: FeatureCache,
    meter: Meter,
    *,
    profile: str = "paper",
) -> Pipeline:
    """A ready pipeline: ``config`` is a full config, or overrides of the ``profile`` defaults."""
    cls = pipeline_class(name)
    return cls(pipeline_entry(name).resolve(config, profile), hub=hub, cache=cache, meter=meter, name=name)
