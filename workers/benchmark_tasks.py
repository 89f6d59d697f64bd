"""Celery task of a distributed benchmark: one shard (a slice of a run's images) per message.

``run_benchmark_shard(shard_id)`` loads the shard and its run from the database, reads the same REFER
files the command reads (the data root must be reachable at the same path on the worker: a shared volume),
runs the same loop as a single-process run (``workers.engine.data.benchmark.run_groups``) with this process's
engine, and writes each image's sentences to ``BenchmarkSentenceResult`` as they come. Results go through
the database because the project runs Celery without a result backend; the command polls the shard rows and
merges the sentence rows.

A message delivered again (late acks after a killed worker) finds the sentences already stored and skips
them; a shard already done or failed is left alone. Errors are stored on the shard in words.
"""

from __future__ import annotations

import logging
import socket

from workers.celery_app import app

log = logging.getLogger(__name__)


@app.task(name="workers.benchmark_tasks.run_benchmark_shard", acks_late=True, ignore_result=True)
def run_benchmark_shard(shard_id: int) -> None:
    from django.conf import settings

    from server.benchmarks import selectors, services
    from workers.engine.data.benchmark.runner import run_groups
    from workers.engine.data.benchmark.spec import BenchmarkSpec
    from workers.engine.data.refer import DatasetError
    from workers.engine.runtime import get_engine

    shard = services.shard_claim(
        shard_id=shard_id, worker=f"{socket.gethostname()}:{run_benchmark_shard.request.hostname or ''}"
    )
    if shard is None:
        log.info("benchmark shard %s is gone, done or failed; nothing to do", shard_id)
        return
    run = shard.run
    try:
        spec = BenchmarkSpec.from_json(run.spec)
        dataset = spec.open_dataset()
        groups = dataset.images(limit=spec.limit, image_ids=shard.image_ids)
        stored = selectors.sentence_results_done(run=run)
        outcome = run_groups(
            dataset,
            groups,
            get_engine(settings.RIS_ENGINE),
            spec.pipelines,
            configs=spec.configs,
            done=stored,
            skip_missing=spec.skip_missing,
            on_results=lambda results: services.sentence_results_store(
                run=run, records=[r.to_json() for r in results]
            ),
        )
    except (DatasetError, ValueError, OSError) as exc:
        services.shard_fail(shard=shard, error=f"shard {shard.index} of run {run.pk}: {exc}")
        log.warning("benchmark shard %s failed: %s", shard_id, exc)
        return
    except Exception as exc:  # an engine error or a bug: stored in words, the command stops and shows it
        services.shard_fail(
            shard=shard, error=f"shard {shard.index} of run {run.pk}: {type(exc).__name__}: {exc}"
        )
        log.exception("benchmark shard %s failed", shard_id)
        return
    services.shard_finish(
        shard=shard,
        missing_images=[
            {"image_id": m.image_id, "path": m.path, "sent_ids": list(m.sent_ids)}
            for m in outcome.missing_images
        ],
        configs=outcome.configs,
    )
