"""Pipelines: a registry from name to a class with a frozen config and ``predict(ctx, expressions)``.

``build_pipeline(name, config, hub, cache, meter)`` builds one; ``list_pipelines()`` names them;
``default_config(name, profile)`` gives the paper's defaults with a profile's model names.
"""

from workers.engine.pipelines.base import ImageContext, Pipeline, PipelineConfig
from workers.engine.pipelines.registry import (
    build_pipeline,
    default_config,
    list_pipelines,
    model_for_profile,
    pipeline_class,
    register_pipeline,
    resolve_config,
)

__all__ = [
    "ImageContext",
    "Pipeline",
    "PipelineConfig",
    "build_pipeline",
    "default_config",
    "list_pipelines",
    "model_for_profile",
    "pipeline_class",
    "register_pipeline",
    "resolve_config",
]
