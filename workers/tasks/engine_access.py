"""The one door from the Celery tasks to the engine: every ``workers.engine`` name the tasks use is here.

The tasks call the engine through the few entry points below and nothing else, so the engine's modules
can move with one edit of this file. Each import happens inside a function: importing the task modules
(which the web process's Celery app does) never imports torch. Tests fake the engine by replacing
``engine_get`` here (``monkeypatch.setattr(engine_access, "engine_get", lambda: fake)``); a fake needs
what the tasks call: ``predict`` (returning a ``workers.engine.runtime.Prediction``: the candidates and the
config that ran), ``prepare``, ``refine``, ``resolve_config``, ``pipelines`` and a ``meter`` with
``capture()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def engine_get() -> Any:
    """The process's engine (``workers.engine.runtime.get_engine``: one per worker process, models loaded once),
    on Django's ``settings.RIS_ENGINE``: the one settings object the web process reads too."""
    from django.conf import settings

    from workers.engine.runtime import get_engine

    return get_engine(settings.RIS_ENGINE)


def image_input(rgb: Any, sha256: str) -> Any:
    """The engine's ``ImageInput`` of an ``H x W x 3`` uint8 RGB array and the image file's SHA-256 (cache key)."""
    from workers.engine.core.types import ImageInput

    return ImageInput(rgb=rgb, sha256=sha256)


def expected_errors() -> tuple[type[BaseException], ...]:
    """Engine errors that are the input's or the setup's fault, not a bug: ``EngineError`` (a missing model,
    a bad config, bad input) and ``DatasetError`` (REFER files that cannot be read)."""
    from workers.engine.core.errors import EngineError
    from workers.engine.data.refer import DatasetError

    return (EngineError, DatasetError)


def benchmark_spec(data: Mapping[str, Any]) -> Any:
    """The ``BenchmarkSpec`` a run stored as JSON (``workers.engine.data.benchmark``); it opens the REFER dataset."""
    from workers.engine.data.benchmark.spec import BenchmarkSpec

    return BenchmarkSpec.from_json(dict(data))


def benchmark_run_groups(
    dataset: Any,
    groups: Any,
    engine: Any,
    pipelines: Any,
    *,
    on_results: Callable[[list[Any]], None],
    **options: Any,
) -> Any:
    """The benchmark's image loop (``workers.engine.data.benchmark.runner.run_groups``): scores each sentence of
    ``groups`` under each pipeline and hands each image's results to ``on_results``. Returns its outcome
    (``missing_images``, counts, and ``configs``: the config each pipeline ran)."""
    from workers.engine.data.benchmark.runner import run_groups

    return run_groups(dataset, groups, engine, pipelines, on_results=on_results, **options)
