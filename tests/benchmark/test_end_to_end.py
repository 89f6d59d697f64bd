"""End to end with the real engine (tiny models): single process, then ``--distributed`` through real Celery
worker processes on the real broker (Redis under ``make test``) and the real database; the per-sentence IoUs
must be identical.

The shard tasks go to a queue of this test's own (``--queue``), purged before use, so the test neither eats
nor is disturbed by other tests' messages on the shared broker; the routing of the task to ``gpu`` is
checked separately.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from server.benchmarks.models import BenchmarkRun, BenchmarkShard
from workers.engine.data.benchmark.results import ResultsFile

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = [
    "--config",
    "global_local.proposal_source=sam_tiny",
    "--config",
    "global_local.clip_model=clip_tiny",
    "--config",
    "global_local.amg.points_per_side=4",
    "--config",
    "global_local.amg.pred_iou_thresh=0",
    "--config",
    "global_local.amg.stability_score_thresh=0",
]


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two images (the engine's per-image work dominates the test's time)."""
    from workers.engine.data.synthetic import write_synthetic_refcoco

    root = tmp_path_factory.mktemp("e2e-refer")
    write_synthetic_refcoco(root, 2, seed=1)
    return root


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.engine.store.ensure import ensure
    from workers.engine.store.manifest import ModelStore

    path = tmp_path_factory.mktemp("bench-models")
    ensure(ModelStore(path))
    return path


@pytest.fixture
def engine_env(tiny_model_dir: Path, engine_settings) -> dict[str, str]:
    """The worker processes' environment, and the same settings for this process's engine."""
    from workers.engine.runtime import reset_engine

    env = {
        "RIS_MODEL_DIR": str(tiny_model_dir),
        "RIS_CACHE_DIR": "none",
        "RIS_DEVICE": "cpu",
        "RIS_MODEL_PROFILE": "tiny",
    }
    engine_settings(model_dir=tiny_model_dir, cache_dir=None, device="cpu", profile="tiny")
    reset_engine()
    yield env
    reset_engine()


def _database_url() -> str:
    db = connection.settings_dict
    if "postgresql" not in db["ENGINE"]:
        pytest.fail("the distributed benchmark test needs PostgreSQL (set DATABASE_URL, as `make test` does)")
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def workers(engine_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """Two real Celery worker processes consuming a fresh queue; yields the queue name."""
    from workers.celery_app import app

    queue = f"bench-e2e-{uuid.uuid4().hex[:8]}"
    with app.connection_for_write() as conn:
        conn.default_channel.queue_declare(queue=queue, durable=True, auto_delete=False)
        conn.default_channel.queue_purge(queue)
    env = {
        **os.environ,
        **engine_env,
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
    }
    procs = []
    for i in range(2):
        log = (tmp_path / f"worker{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "workers.celery_app",
                    "worker",
                    "-Q",
                    queue,
                    "--pool",
                    "solo",
                    "-c",
                    "1",
                    "-n",
                    f"bench{i}-{queue}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "-l",
                    "info",
                ],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        yield queue
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


def test_shard_task_is_routed_to_the_background_lane() -> None:
    from workers.celery_app import app

    route = app.amqp.router.route({}, "workers.benchmark_tasks.run_benchmark_shard")
    assert route["queue"].name == "background"
    import workers.tasks.benchmark  # noqa: F401  (registers the task under its agreed name)

    assert "workers.benchmark_tasks.run_benchmark_shard" in app.tasks


@pytest.mark.django_db(transaction=True)
@pytest.mark.services
@pytest.mark.slow
def test_single_and_distributed_runs_give_identical_ious(
    small_root: Path, tmp_path: Path, workers: str
) -> None:
    common = [
        "--dataset",
        "refcoco",
        "--split",
        "val",
        "--pipeline",
        "global_local",
        "--data-root",
        str(small_root),
        "--no-progress",
        *TINY_CONFIG,
    ]
    call_command("benchmark", *common, "--out", str(tmp_path / "single"))
    call_command(
        "benchmark",
        *common,
        "--out",
        str(tmp_path / "dist"),
        "--distributed",
        "--queue",
        workers,
        "--shard-images",
        "1",
        "--poll",
        "0.3",
        "--wait-timeout",
        "1800",  # a ceiling only: the command returns as soon as the shards are done (loaded machines are slow)
    )

    single = ResultsFile(tmp_path / "single" / "results.jsonl").read()
    dist = ResultsFile(tmp_path / "dist" / "results.jsonl").read()
    assert len(single) == len(dist) > 0
    assert {r.sent_id: (r.intersection, r.union) for r in single} == {
        r.sent_id: (r.intersection, r.union) for r in dist
    }
    assert any(r.n_candidates > 0 for r in single)  # real proposals were ranked
    assert any(r.iou > 0 for r in single)

    runs = {r.distributed: r for r in BenchmarkRun.objects.all()}
    assert runs[False].state == runs[True].state == "succeeded"
    shards = list(BenchmarkShard.objects.filter(run=runs[True]))
    assert len(shards) == runs[True].n_images == 2 and all(s.state == "done" for s in shards)
    assert len({s.worker for s in shards}) >= 1
    a, b = (
        json.loads((tmp_path / d / "summary.json").read_text())["pipelines"]["global_local"]
        for d in ("single", "dist")
    )
    for key in ("n", "oiou", "miou", "prec@0.5", "prec@0.9", "no_proposal", "iou_histogram"):
        assert a[key] == b[key], key
    assert a["model_calls_per_sentence"]["sam_tiny"] == pytest.approx(
        b["model_calls_per_sentence"]["sam_tiny"]
    )
