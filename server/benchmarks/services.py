"""Writes of benchmark runs. Plain dicts in (JSON of ``workers.engine.data.benchmark`` records), so the web side
never imports the engine. Keyword-only, typed, one transaction where a write has several parts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from server.benchmarks.models import (
    BenchmarkPipelineResult,
    BenchmarkRun,
    BenchmarkSentenceResult,
    BenchmarkShard,
)

_SENTENCE_FIELDS = [
    f.name for f in BenchmarkSentenceResult._meta.get_fields() if f.concrete and f.name not in ("id", "run")
]


def run_create(
    *, spec: Mapping[str, Any], distributed: bool, device: str = "", out_dir: str = ""
) -> BenchmarkRun:
    return BenchmarkRun.objects.create(
        dataset=spec["dataset"],
        split_by=spec["split_by"],
        split=spec["split"],
        pipelines=list(spec["pipelines"]),
        spec=dict(spec),
        distributed=distributed,
        device=device,
        out_dir=out_dir,
    )


def run_set_state(*, run: BenchmarkRun, state: str, error: str = "") -> BenchmarkRun:
    run.state = state
    run.error = error
    run.finished_at = None if state == BenchmarkRun.State.RUNNING else timezone.now()
    run.save(update_fields=["state", "error", "finished_at"])
    return run


def run_restart(*, run: BenchmarkRun, spec: Mapping[str, Any]) -> BenchmarkRun:
    """A resumed run is running again (its spec's paths may have changed)."""
    run.spec = dict(spec)
    run.save(update_fields=["spec"])
    return run_set_state(run=run, state=BenchmarkRun.State.RUNNING)


def sentence_results_store(*, run: BenchmarkRun, records: Iterable[Mapping[str, Any]]) -> int:
    """Insert per-sentence records; one already stored for (run, pipeline, sent_id) is kept as it is."""
    rows = [BenchmarkSentenceResult(run=run, **{k: r[k] for k in _SENTENCE_FIELDS}) for r in records]
    with transaction.atomic():
        BenchmarkSentenceResult.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    return len(rows)


@transaction.atomic
def run_finish(
    *,
    run: BenchmarkRun,
    summary: Mapping[str, Mapping[str, Any]],
    configs: Mapping[str, Any],
    n_images: int,
    n_sentences: int,
    missing_images: Sequence[Mapping[str, Any]],
    summary_markdown: str,
    figure_png: bytes | None,
) -> BenchmarkRun:
    """Store the per-pipeline results (replacing earlier ones of this run) and mark the run succeeded."""
    BenchmarkPipelineResult.objects.filter(run=run).delete()
    BenchmarkPipelineResult.objects.bulk_create(
        [
            BenchmarkPipelineResult(
                run=run,
                pipeline=name,
                config=dict(configs.get(name) or {}),
                n_sentences=s["n"],
                n_images=s["images"],
                oiou=s["oiou"],
                miou=s["miou"],
                prec_50=s["prec@0.5"],
                prec_60=s["prec@0.6"],
                prec_70=s["prec@0.7"],
                prec_80=s["prec@0.8"],
                prec_90=s["prec@0.9"],
                no_proposal=s["no_proposal"],
                missing_image=s["missing_image"],
                seconds_per_sentence=s["seconds_per_sentence"],
                seconds_per_image=s["seconds_per_image"],
                model_calls_per_sentence=dict(s["model_calls_per_sentence"]),
                iou_histogram=list(s["iou_histogram"]),
            )
            for name, s in summary.items()
        ]
    )
    run.n_images = n_images
    run.n_sentences = n_sentences
    run.missing_images = list(missing_images)
    run.summary_markdown = summary_markdown
    run.figure_png = figure_png
    run.save(update_fields=["n_images", "n_sentences", "missing_images", "summary_markdown", "figure_png"])
    return run_set_state(run=run, state=BenchmarkRun.State.SUCCEEDED)


def shards_create(*, run: BenchmarkRun, shards: Sequence[tuple[Sequence[int], int]]) -> list[BenchmarkShard]:
    """One row per shard: ``(image_ids, n_sentences)``, indexed in order."""
    return BenchmarkShard.objects.bulk_create(
        [
            BenchmarkShard(run=run, index=i, image_ids=[int(x) for x in ids], n_sentences=n)
            for i, (ids, n) in enumerate(shards)
        ]
    )


def shards_requeue(*, run: BenchmarkRun) -> list[BenchmarkShard]:
    """Shards of a resumed run that are not done go back to queued; returns them."""
    pending = BenchmarkShard.objects.filter(run=run).exclude(state=BenchmarkShard.State.DONE)
    pending.update(state=BenchmarkShard.State.QUEUED, error="")
    return list(BenchmarkShard.objects.filter(run=run, state=BenchmarkShard.State.QUEUED))


def shard_claim(*, shard_id: int, worker: str) -> BenchmarkShard | None:
    """Mark a shard running (from queued, or from running when its message is delivered again).

    Returns ``None`` when the shard does not exist or is already done or failed, so a duplicate message
    does no work twice.
    """
    claimed = BenchmarkShard.objects.filter(
        Q(state=BenchmarkShard.State.QUEUED) | Q(state=BenchmarkShard.State.RUNNING), pk=shard_id
    ).update(
        state=BenchmarkShard.State.RUNNING,
        worker=worker,
        attempts=F("attempts") + 1,
        started_at=timezone.now(),
    )
    if not claimed:
        return None
    return BenchmarkShard.objects.select_related("run").get(pk=shard_id)


def shard_finish(
    *,
    shard: BenchmarkShard,
    missing_images: Sequence[Mapping[str, Any]],
    configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Mark a shard done with its missing images and the configs its worker ran (per pipeline)."""
    shard.state = BenchmarkShard.State.DONE
    shard.missing_images = list(missing_images)
    shard.configs = {k: dict(v) for k, v in (configs or {}).items()}
    shard.error = ""
    shard.finished_at = timezone.now()
    shard.save(update_fields=["state", "missing_images", "configs", "error", "finished_at"])


def shard_fail(*, shard: BenchmarkShard, error: str) -> None:
    shard.state = BenchmarkShard.State.FAILED
    shard.error = error
    shard.finished_at = timezone.now()
    shard.save(update_fields=["state", "error", "finished_at"])
