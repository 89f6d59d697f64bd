"""Reads of benchmark runs."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Prefetch, QuerySet

from server.benchmarks.models import (
    BenchmarkPipelineResult,
    BenchmarkRun,
    BenchmarkSentenceResult,
    BenchmarkShard,
)
from server.benchmarks.services import _SENTENCE_FIELDS


def run_list() -> QuerySet[BenchmarkRun]:
    return (
        BenchmarkRun.objects.defer("figure_png", "summary_markdown")
        .prefetch_related(
            Prefetch("pipeline_results", queryset=BenchmarkPipelineResult.objects.order_by("pipeline"))
        )
        .annotate(n_done=Count("sentence_results"))
    )


def run_get(*, run_id: int) -> BenchmarkRun:
    return BenchmarkRun.objects.get(pk=run_id)


def sentence_results_done(*, run: BenchmarkRun) -> dict[str, set[int]]:
    """Sentence ids already stored for the run, per pipeline."""
    done: dict[str, set[int]] = {}
    for pipeline, sent_id in BenchmarkSentenceResult.objects.filter(run=run).values_list(
        "pipeline", "sent_id"
    ):
        done.setdefault(pipeline, set()).add(sent_id)
    return done


def sentence_results_count(*, run: BenchmarkRun) -> int:
    return BenchmarkSentenceResult.objects.filter(run=run).count()


def sentence_results_records(*, run: BenchmarkRun) -> list[dict[str, Any]]:
    """All per-sentence records of a run as dicts (the fields of ``SentenceResult``), in a stable order."""
    return list(
        BenchmarkSentenceResult.objects.filter(run=run)
        .order_by("pipeline", "image_id", "sent_id")
        .values(*_SENTENCE_FIELDS)
    )


def sentence_results_worst(
    *, run: BenchmarkRun, pipeline: str, n: int = 20
) -> QuerySet[BenchmarkSentenceResult]:
    return BenchmarkSentenceResult.objects.filter(run=run, pipeline=pipeline).order_by("iou", "sent_id")[:n]


def shard_states(*, run: BenchmarkRun) -> dict[str, int]:
    counts = {s: 0 for s in BenchmarkShard.State.values}
    for state, n in BenchmarkShard.objects.filter(run=run).values_list("state").annotate(n=Count("id")):
        counts[state] = n
    return counts


def shards_failed(*, run: BenchmarkRun) -> list[BenchmarkShard]:
    return list(BenchmarkShard.objects.filter(run=run, state=BenchmarkShard.State.FAILED))


def shards_missing_images(*, run: BenchmarkRun) -> list[dict[str, Any]]:
    missing: list[dict[str, Any]] = []
    for shard in BenchmarkShard.objects.filter(run=run).order_by("index"):
        missing.extend(shard.missing_images)
    return sorted(missing, key=lambda m: m["image_id"])


def shard_configs(*, run: BenchmarkRun) -> dict[str, dict[str, Any]]:
    """Per pipeline, the config the run's shards ran (``ValueError`` when two shards ran different ones)."""
    configs: dict[str, dict[str, Any]] = {}
    for shard in BenchmarkShard.objects.filter(run=run).order_by("index"):
        for pipeline, config in (shard.configs or {}).items():
            if pipeline in configs and configs[pipeline] != config:
                raise ValueError(
                    f"shards of run {run.pk} ran pipeline {pipeline!r} with different configs "
                    f"(shard {shard.index} differs); the workers' settings (RIS_MODEL_PROFILE) disagree"
                )
            configs[pipeline] = config
    return configs


def worker_rates(*, run: BenchmarkRun) -> dict[str, dict[str, Any]]:
    """Per worker, from its finished shards: (sentence, pipeline) pairs done, seconds and the rate.

    ``{"worker@host": {"shards": 2, "sentences": 140, "seconds": 61.2, "sentences_per_second": 2.29}}``;
    a shard's seconds run from its claim (``started_at``) to ``finished_at``. Workers with no finished shard
    are not listed yet.
    """
    per_pipeline = max(len(run.pipelines or []), 1)
    rates: dict[str, dict[str, Any]] = {}
    done = BenchmarkShard.objects.filter(
        run=run, state=BenchmarkShard.State.DONE, started_at__isnull=False, finished_at__isnull=False
    ).order_by("index")
    for shard in done:
        entry = rates.setdefault(shard.worker or "?", {"shards": 0, "sentences": 0, "seconds": 0.0})
        entry["shards"] += 1
        entry["sentences"] += shard.n_sentences * per_pipeline
        entry["seconds"] += max((shard.finished_at - shard.started_at).total_seconds(), 0.0)
    for entry in rates.values():
        entry["sentences_per_second"] = entry["sentences"] / entry["seconds"] if entry["seconds"] > 0 else 0.0
    return rates
