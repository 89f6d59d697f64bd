"""Distributed benchmarks: ``run_benchmark_shard(shard_id)`` runs one shard (a slice of a run's images).

The shard runs through the shared lifecycle (``workers.tasks.lifecycle``): claimed by the rule of all
work, a heartbeat while it runs (a shard requeued by ``--resume`` or taken over is noticed between two
images and left to its new delivery), the error in words on the shard, database-unavailable retries with
backoff. The body reads the same REFER files the command reads (the data root must be reachable at the
same path on the worker: a shared volume), runs the single-process loop with this process's engine and
writes each image's sentences to ``BenchmarkSentenceResult`` as they come; results go through the
database because the project runs Celery without a result backend. The command polls the shard rows and
merges the sentence rows. A delivery after a lost worker finds the sentences already stored and skips them.
"""

from __future__ import annotations

from typing import Any

from workers.celery_app import app
from workers.tasks import engine_access
from workers.tasks.lifecycle import DB_RETRY_MAX, Lifecycle, Work, WorkStopped, run_work


def _lifecycle() -> Lifecycle:
    from server.benchmarks.services import shard_claim, shard_fail, shard_heartbeat
    from server.ris.services.work import job_stale_seconds

    return Lifecycle(
        label="Benchmark shard",
        claim=lambda *, pk, worker, task_id: shard_claim(shard_id=pk, worker=worker, task_id=task_id),
        beat=lambda *, pk, attempt: shard_heartbeat(shard_id=pk, attempt=attempt),
        fail=lambda work, words: shard_fail(shard=work.row, error=words, attempt=work.attempt),
        stale_seconds=job_stale_seconds,
        words=lambda shard, words: f"shard {shard.index} of run {shard.run_id}: {words}",
        expected=(OSError,),  # the data root is not reachable from this worker
        interrupted="stopped",  # requeued (--resume) or taken over: the next message goes on from here
        background=lambda shard: True,  # the background lane: yields to interactive work
    )


def _run_shard(work: Work) -> str:
    """Score the claimed shard's sentences, store them image by image, mark the shard done."""
    from server.benchmarks import selectors, services

    shard = work.row
    run = shard.run
    spec = engine_access.benchmark_spec(run.spec)
    dataset = spec.open_dataset()
    groups = dataset.images(limit=spec.limit, image_ids=shard.image_ids)

    def store(results: list[Any]) -> None:
        services.sentence_results_store(run=run, records=[r.to_json() for r in results])
        if work.stopped:
            raise WorkStopped

    outcome = engine_access.benchmark_run_groups(
        dataset,
        groups,
        engine_access.engine_get(),
        spec.pipelines,
        configs=spec.configs,
        done=selectors.sentence_results_done(run=run),
        skip_missing=spec.skip_missing,
        on_results=store,
        schedule=spec.schedule,
    )
    missing = [
        {"image_id": m.image_id, "path": m.path, "sent_ids": list(m.sent_ids)} for m in outcome.missing_images
    ]
    if not services.shard_finish(
        shard=shard, missing_images=missing, configs=outcome.configs, attempt=work.attempt
    ):
        return "discarded"
    return "succeeded"


@app.task(
    bind=True,
    name="workers.benchmark_tasks.run_benchmark_shard",
    max_retries=DB_RETRY_MAX,
    acks_late=True,
    ignore_result=True,
)
def run_benchmark_shard(self: Any, shard_id: int) -> str:
    """Run benchmark shard ``shard_id`` and store its sentence results.

    Returns ``succeeded``, ``failed`` (the error is on the shard; the command stops and shows it),
    ``skipped`` (not claimable), ``stopped`` (requeued or taken over meanwhile) or ``discarded``.
    """
    return run_work(self, _lifecycle(), shard_id, _run_shard)
