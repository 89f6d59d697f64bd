"""Writes of benchmark runs. Plain dicts in (JSON of ``workers.engine.data.benchmark`` records), so the web side
never imports the engine. Keyword-only, typed, one transaction where a write has several parts.

A distributed run's shards live by the rules of every kind of work (``server.ris.services.work``): sent
with ``shard_dispatch`` (to the queue the command named, kept on the row), claimed by
``workers.benchmark_tasks.run_benchmark_shard`` (queued; or running, on a redelivery of the message that
claimed it or once its heartbeat is older than ``RIS_JOB_STALE_SECONDS``), kept alive by
``shard_heartbeat``, ended by ``shard_finish`` or ``shard_fail``. ``shards_reconcile`` sends again the
shards of running runs whose message or worker was lost, and fails in words a shard whose workers died
``RIS_JOB_MAX_ATTEMPTS`` times; shards of a run that is not running (interrupted, failed) are left to
``--resume``, which queues and sends the unfinished ones again.

The run itself is driven by the ``manage.py benchmark`` process, which records its host and pid
(``run_attach``) and beats (``run_heartbeat``) while it works. ``runs_reconcile`` (the periodic reconciler,
and every read of the benchmark pages) marks a running run interrupted, with the reason, when that process
is gone (same host, pid not alive) or silent for ``RIS_BENCHMARK_STALE_SECONDS``: a run killed by SIGKILL,
the OOM killer or a native crash is never left "running", and ``--resume`` continues it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from server.benchmarks.models import (
    BenchmarkPipelineResult,
    BenchmarkRun,
    BenchmarkSentenceResult,
    BenchmarkShard,
)
from server.ris.services.dispatch import RUN_BENCHMARK_SHARD
from server.ris.services.work import (
    ReconcileReport,
    WorkKind,
    job_stale_seconds,
    work_claim,
    work_dispatch,
    work_fail,
    work_heartbeat,
    work_reconcile,
    work_running,
)

SHARD_TASK = RUN_BENCHMARK_SHARD


def _words_given_up(shard: BenchmarkShard) -> str:
    return (
        f"shard {shard.index} of run {shard.run_id}: the worker running it stopped responding "
        f"{shard.attempts} times (no heartbeat for {settings.RIS_JOB_STALE_SECONDS} s); it was given up. "
        "Run the command again with --resume to retry it."
    )


SHARD_WORK = WorkKind(
    label="benchmark shard",
    model=BenchmarkShard,
    task_name=RUN_BENCHMARK_SHARD,
    stale_seconds=job_stale_seconds,
    words_given_up=_words_given_up,
    created_field="run__created_at",
    queue_field="queue",
    related=("run",),
    resets={"error": ""},
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


def run_attach(*, run: BenchmarkRun, pid: int | None = None, host: str | None = None) -> BenchmarkRun:
    """Record the process driving ``run`` (default: this one) and a first heartbeat."""
    run.pid = os.getpid() if pid is None else pid
    run.host = socket.gethostname() if host is None else host
    run.heartbeat_at = timezone.now()
    run.save(update_fields=["pid", "host", "heartbeat_at"])
    return run


def run_heartbeat(*, run: BenchmarkRun) -> None:
    """The driving process is alive (called as results come in and while a distributed run waits)."""
    now = timezone.now()
    BenchmarkRun.objects.filter(pk=run.pk).update(heartbeat_at=now)
    run.heartbeat_at = now


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def runs_reconcile(*, now: Any = None) -> list[int]:
    """Mark interrupted every running run whose driving process is gone or silent; the ids marked.

    Gone: on this host and its pid is not alive. Silent: no heartbeat for ``RIS_BENCHMARK_STALE_SECONDS``
    (a process on another host, or a pid reused by another program). The reason goes in ``error``.
    """
    now = now or timezone.now()
    stale = timedelta(seconds=settings.RIS_BENCHMARK_STALE_SECONDS)
    here = socket.gethostname()
    marked = []
    for run in BenchmarkRun.objects.filter(state=BenchmarkRun.State.RUNNING, pid__isnull=False):
        reason = ""
        if run.host == here and not _process_alive(int(run.pid)):
            reason = (
                f"interrupted: its process (pid {run.pid} on {run.host}) ended without finishing "
                "(killed, out of memory or crashed)"
            )
        elif run.heartbeat_at is not None and now - run.heartbeat_at > stale:
            silent = int((now - run.heartbeat_at).total_seconds())
            reason = (
                f"interrupted: no sign of life from its process (pid {run.pid} on {run.host}) for {silent} s"
            )
        if not reason:
            continue
        reason += (
            f"; results so far are kept: continue with manage.py benchmark ... --out {run.out_dir} --resume"
        )
        changed = BenchmarkRun.objects.filter(pk=run.pk, state=BenchmarkRun.State.RUNNING).update(
            state=BenchmarkRun.State.INTERRUPTED, error=reason, finished_at=now
        )
        if changed:
            marked.append(run.pk)
    return marked


def sentence_results_store(*, run: BenchmarkRun, records: Iterable[Mapping[str, Any]]) -> int:
    """Insert per-sentence records; one already stored for (run, pipeline, sent_id) is kept as it is."""
    rows = [
        BenchmarkSentenceResult(run=run, **{k: r[k] for k in _SENTENCE_FIELDS if k in r}) for r in records
    ]
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
                ranking={k: v for k, v in s.items() if k.startswith(("hit@", "oracle_iou@", "ceiling_"))},
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
    """Shards of a resumed run that are not done go back to queued; returns them (to be sent again).

    A shard still running on a worker (the shards of an interrupted run keep running) is no longer that
    worker's: its heartbeat finds it queued and the worker stops between two images; the message sent
    again goes on from the sentences already stored.
    """
    pending = BenchmarkShard.objects.filter(run=run).exclude(state=BenchmarkShard.State.DONE)
    pending.update(state=BenchmarkShard.State.QUEUED, error="", worker="")
    return list(BenchmarkShard.objects.filter(run=run, state=BenchmarkShard.State.QUEUED))


def shard_dispatch(*, shard: BenchmarkShard, queue: str | None = None) -> bool:
    """Send the shard's task (to ``queue``, else the routed queue) and record when; False if the broker refused.

    The queue is kept on the shard, so the reconciler sends a lost message again to the same workers.
    """
    if queue is not None and shard.queue != queue:
        BenchmarkShard.objects.filter(pk=shard.pk).update(queue=queue)
        shard.queue = queue
    return work_dispatch(SHARD_WORK, pk=shard.pk, queue=shard.queue or None)


def shard_claim(*, shard_id: int, worker: str, task_id: str = "") -> BenchmarkShard | None:
    """Mark a shard running for ``worker`` and count the attempt; None if it is not this worker's to run.

    The claim rule of all work (``work_claim``): queued, or running on a redelivery of the message that
    claimed it (``task_id``), or running with a stale heartbeat. Returns the shard with its run loaded, or
    ``None`` when the shard does not exist, is done or failed, or runs under a live worker.
    """
    return work_claim(SHARD_WORK, pk=shard_id, worker=worker, task_id=task_id)


def shard_heartbeat(*, shard_id: int, attempt: int | None = None) -> bool:
    """Record a heartbeat; False if the shard is no longer running (under ``attempt`` when given)."""
    return work_heartbeat(SHARD_WORK, pk=shard_id, attempt=attempt)


def shard_finish(
    *,
    shard: BenchmarkShard,
    missing_images: Sequence[Mapping[str, Any]],
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    attempt: int | None = None,
) -> bool:
    """Mark the shard done with its missing images and the configs its worker ran (per pipeline); False if it
    is no longer running (under ``attempt``)."""
    done = work_running(SHARD_WORK, pk=shard.pk, attempt=attempt).update(
        state=BenchmarkShard.State.DONE,
        missing_images=list(missing_images),
        configs={k: dict(v) for k, v in (configs or {}).items()},
        error="",
        finished_at=timezone.now(),
    )
    return done == 1


def shard_fail(*, shard: BenchmarkShard, error: str, attempt: int | None = None) -> bool:
    """Mark the shard failed with ``error`` in words; False if it had already ended (or, with ``attempt``,
    runs under another attempt)."""
    return work_fail(SHARD_WORK, pk=shard.pk, error=error, attempt=attempt)


def shards_reconcile(*, now: Any = None) -> ReconcileReport:
    """Send again the shards of running runs whose message or worker was lost; fail those whose workers
    died too often."""
    return work_reconcile(SHARD_WORK, now=now, scope=Q(run__state=BenchmarkRun.State.RUNNING))
