"""Faults with real processes: Celery workers killed with SIGKILL, a Redis broker restarted empty, the
database taken away from the web server and the workers, a job that raises, cancellation, and a refine
request and a benchmark shard whose worker vanished.

Every process is real and separate: ``celery worker --pool solo`` processes (one per "GPU", as deployed),
``celery beat`` running the periodic reconciler every 2 s, a private ``redis-server`` of this module only
(on a free port from 6390, never the shared one), a TCP proxy between the workers and PostgreSQL (closing
it takes the database away from them and nobody else), and gunicorn with production settings. The test
process serves the API through DRF's test client on the live test database (``transactional_db``), so
what it commits the workers see.

Two kinds of job, both through the real engine (nothing in it is slowed down or faked for the tests):

- slow: real MobileSAM on a real photo (skimage's astronaut, 128 px, 4 point prompts) with the tiny CLIP,
  about 10 s of work on this CPU. That is the job a test kills or cancels "in the middle", and the test
  checks it was (state running, no candidates) before going on.
- quick: the random-weight ``sam_tiny`` proposal model (thresholds off so it proposes masks) and the tiny
  CLIP, a couple of seconds, for the tests where only the job's life matters (Redis restart, a failing job
  in a batch, the database outage).

Timings chosen for the test: ``RIS_JOB_STALE_SECONDS=10`` (the reconciler takes a job back after 10 s
without a heartbeat; workers beat every 2.5 s while the engine works) and ``RIS_RECONCILE_INTERVAL=2``.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from tests.faults.procs import (
    ROOT,
    CeleryProcess,
    PrivateRedis,
    TcpProxy,
    celery_env,
    database_url,
    free_port,
    wait_until,
    wait_while_progressing,
)

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STALE_SECONDS = 10
PHOTO_SIDE = 128
# Real MobileSAM with enough prompts that a job outlasts the test's reaction time even on an idle machine.
SLOW = {"proposal_source": "mobile_sam", "amg": {"points_per_side": 12}, "features": {"shorter_side": 224}}
QUICK = {
    "proposal_source": "sam_tiny",
    "amg": {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    "features": {"shorter_side": 224},
}
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass
class Fleet:
    """The module's processes: a private Redis, beat, up to two workers, a proxy in front of PostgreSQL."""

    redis: PrivateRedis
    proxy: TcpProxy
    env: dict[str, str]
    logs: Path
    model_dir: Path
    workers: list[CeleryProcess] = field(default_factory=list)
    beat: CeleryProcess | None = None
    _count: int = 0

    def start_worker(self) -> CeleryProcess:
        self._count += 1
        label = f"fault{self._count}"
        cache = self.logs / f"cache-{label}"  # each worker its own engine cache, as on separate machines
        env = {**self.env, "RIS_MODEL_DIR": str(self.model_dir), "RIS_CACHE_DIR": str(cache)}
        worker = CeleryProcess.worker(env=env, logs=self.logs, label=label)
        self.workers.append(worker)
        return worker

    def ensure_workers(self, count: int = 2) -> None:
        self.workers = [w for w in self.workers if w.alive()]
        while len(self.workers) < count:
            self.start_worker()
        for worker in self.workers:
            worker.wait_ready()

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def worker_of(self, job) -> CeleryProcess:
        owner = [w for w in self.workers if job.worker.startswith(f"{w.name}@")]
        assert owner, (
            f"job {job.pk} is held by {job.worker!r}, not by one of {[w.name for w in self.workers]}"
        )
        return owner[0]

    def log_paths(self) -> list[Path]:
        return sorted(self.logs.glob("*.log"))

    def all_logs(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.log_paths())


@pytest.fixture(scope="module")
def fleet(
    django_db_setup, model_dir: Path, shared_media: Path, artifacts: Path, tmp_path_factory
) -> Iterator[Fleet]:
    from celery import Celery

    import workers.celery_app

    if connection.vendor != "postgresql":
        pytest.fail("the fault tests need DATABASE_URL=postgres://... (run them through `make test`)")
    logs = artifacts / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()
    for old in logs.glob("cache-*"):  # an engine cache of an earlier run would make the slow jobs quick
        shutil.rmtree(old)
    redis = PrivateRedis(tmp_path_factory.mktemp("redis"))
    redis.start()
    proxy = TcpProxy(int(connection.settings_dict.get("PORT") or 5432))
    proxy.open()
    env = celery_env(
        broker_url=redis.url,
        database_url=database_url(connection.settings_dict, port=proxy.port),
        media_root=shared_media,
        RIS_JOB_STALE_SECONDS=str(STALE_SECONDS),
        RIS_RECONCILE_INTERVAL="2",
    )
    fleet = Fleet(redis=redis, proxy=proxy, env=env, logs=logs, model_dir=model_dir)
    fleet.beat = CeleryProcess.beat(env=env, logs=logs)

    # This process sends to the private Redis too (Celery reads CELERY_BROKER_URL before its config).
    private = Celery("ris-faults", set_as_current=False)
    private.config_from_object("django.conf:settings", namespace="CELERY")
    private.conf.broker_url = redis.url
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CELERY_BROKER_URL", raising=False)
        patch.setattr(workers.celery_app, "app", private)
        try:
            yield fleet
        finally:
            fleet.stop_workers()
            if fleet.beat is not None:
                fleet.beat.stop()
            proxy.close()
            redis.kill()
            private.close()


# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture
def no_warmup(settings) -> None:
    settings.RIS_PREPARE_ON_UPLOAD = False  # jobs, not background warm-ups, are what these tests watch


def upload(api_client, project, name: str, data: bytes) -> dict:
    response = api_client.post(
        f"/api/projects/{project.pk}/images/",
        {"files": [SimpleUploadedFile(name, data, content_type="image/jpeg")]},
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    return response.json()["images"][0]


def ask(api_client, image_id: int, text: str, config: dict) -> int:
    response = api_client.post(
        f"/api/images/{image_id}/expressions/",
        {"text": text, "pipeline": "global_local", "config": config},
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json()["job"]["id"]


def job_row(job_id: int):
    from server.ris.models import SegmentationJob

    return SegmentationJob.objects.get(pk=job_id)


def jobs_progress(job_ids: list[int]) -> list[tuple]:
    """What a job shows while it moves: state, progress, attempts, heartbeat, worker."""
    from server.ris.models import SegmentationJob

    return list(
        SegmentationJob.objects.filter(pk__in=job_ids)
        .order_by("pk")
        .values_list("state", "progress", "attempts", "heartbeat_at", "worker")
    )


def wait_for_jobs(fleet: Fleet, job_ids: list[int], states=FINISHED) -> list:
    """Wait until every job is in ``states``, for as long as the jobs or the workers' logs move."""

    def done():
        rows = [job_row(job_id) for job_id in job_ids]
        return rows if all(row.state in states for row in rows) else None

    return wait_while_progressing(
        done,
        progress=lambda: jobs_progress(job_ids),
        what=f"jobs {job_ids} to reach {states}",
        logs=fleet.log_paths(),
    )


def assert_candidates_written_once(job_id: int, height: int = PHOTO_SIDE, width: int = PHOTO_SIDE) -> list:
    from server.ris.models import Candidate

    rows = list(Candidate.objects.filter(job_id=job_id).order_by("rank"))
    assert rows, f"job {job_id} has no candidates"
    assert [row.rank for row in rows] == list(range(len(rows))), "ranks repeat or skip: written twice?"
    assert all(row.rle["size"] == [height, width] for row in rows)
    return rows


def broker_gpu_messages() -> int | None:
    from server.ris.services.dispatch import JOB_QUEUE, broker_queue_size

    return broker_queue_size(JOB_QUEUE)


# ------------------------------------------------------------------------------------------ tests


def test_redis_restarted_empty_loses_no_job(fleet, api_client, project, user, photo_jpeg, no_warmup):
    """Jobs wait in Redis (and one is held by a worker that died with it); Redis is killed and comes back
    empty; the periodic reconciler sends every job the database holds as queued or running again."""
    from django.utils import timezone

    from server.ris.services import job_claim

    fleet.stop_workers()  # nobody consumes: the messages sit in Redis when it dies
    images = [upload(api_client, project, f"r{i}.jpg", photo_jpeg(i, PHOTO_SIDE)) for i in range(2)]
    queued = [
        ask(api_client, image["id"], text, QUICK)
        for image in images
        for text in ("the astronaut", "the flag")
    ]
    ghost = ask(api_client, images[0]["id"], "the helmet", QUICK)
    assert job_claim(job_id=ghost, worker="ghost@gone", task_id="lost-with-redis") is not None
    assert broker_gpu_messages() == 5

    fleet.redis.kill()
    fleet.redis.start()
    restarted_at = timezone.now()
    assert fleet.redis.keys() == [] and broker_gpu_messages() == 0, "Redis came back with data"

    fleet.ensure_workers(2)
    jobs = wait_for_jobs(fleet, [*queued, ghost])
    for job in jobs:
        assert job.state == "succeeded", f"job {job.pk}: {job.state} {job.error}"
        assert job.dispatched_at > restarted_at, f"job {job.pk} was not sent again after the restart"
        assert_candidates_written_once(job.pk)
    assert [job.attempts for job in jobs] == [1, 1, 1, 1, 2]  # the ghost's dead attempt counts
    assert "Reconciler: sent again" in fleet.all_logs()


def test_worker_killed_mid_job_is_finished_once_by_another(fleet, api_client, project, photo_jpeg, no_warmup):
    fleet.ensure_workers(2)
    image = upload(api_client, project, "k.jpg", photo_jpeg(5, PHOTO_SIDE))
    job_id = ask(api_client, image["id"], "the woman in the space suit", SLOW)

    def in_the_engine():
        job = job_row(job_id)
        assert job.state in ("queued", "running"), (
            f"job {job_id} ended before the kill: {job.state} {job.error}"
        )
        return job if job.state == "running" and job.progress >= 0.1 else None

    running = wait_while_progressing(
        in_the_engine,
        progress=lambda: jobs_progress([job_id]),
        what=f"job {job_id} to run",
        logs=fleet.log_paths(),
        interval=0.05,
    )
    victim = fleet.worker_of(running)
    victim.kill()
    killed = job_row(job_id)
    assert killed.state == "running" and killed.candidates.count() == 0, "the job was not in the middle"
    survivor = next(w for w in fleet.workers if w is not victim)
    fleet.start_worker()  # the fleet gets back to two workers for the next tests

    (job,) = wait_for_jobs(fleet, [job_id])
    assert job.state == "succeeded", f"{job.state}: {job.error}"
    assert job.attempts == 2, "the job ran once more, no more"
    assert not job.worker.startswith(f"{victim.name}@")
    assert_candidates_written_once(job_id)
    assert f"sent again [{job_id}]" in fleet.all_logs()  # taken back by the reconciler (no heartbeat)
    assert survivor.alive()


def test_job_that_raises_fails_in_words_others_go_on_and_retry_works(
    fleet, api_client, project, photo_jpeg, no_warmup
):
    """One image of a batch has lost its stored file: its job fails with the reason, the others succeed,
    and once the file is back the retry button (the retry endpoint) runs it to success."""
    fleet.ensure_workers(2)
    good = upload(api_client, project, "good.jpg", photo_jpeg(7, PHOTO_SIDE))
    bad = upload(api_client, project, "bad.jpg", photo_jpeg(8, PHOTO_SIDE))
    from server.ris.models import Image

    key = Image.objects.get(pk=bad["id"]).storage_key
    stored = default_storage.open(key, "rb").read()
    default_storage.delete(key)

    batch = [
        ask(api_client, good["id"], "the astronaut", QUICK),
        ask(api_client, bad["id"], "the astronaut", QUICK),
    ]
    batch.append(ask(api_client, good["id"], "the flag", QUICK))
    jobs = {job.pk: job for job in wait_for_jobs(fleet, batch)}
    failed = jobs[batch[1]]
    assert failed.state == "failed"
    assert "bad.jpg" in failed.error and "missing from storage" in failed.error, failed.error
    for job_id in (batch[0], batch[2]):
        assert jobs[job_id].state == "succeeded", jobs[job_id].error
    shown = api_client.get(f"/api/jobs/{failed.pk}/").json()
    assert shown["state"] == "failed" and shown["error"] == failed.error
    items = api_client.get(f"/web/projects/{project.pk}/review/items/").json()["items"]
    assert any((item.get("job") or {}).get("error") == failed.error for item in items)

    default_storage.save(key, SimpleUploadedFile("bad.jpg", stored))
    retried = api_client.post(f"/api/jobs/{failed.pk}/retry/")
    assert retried.status_code == 200 and retried.json()["state"] == "queued"
    (job,) = wait_for_jobs(fleet, [failed.pk])
    assert job.state == "succeeded" and job.error == "", job.error
    assert_candidates_written_once(job.pk)


def test_cancel_a_queued_and_a_running_job(fleet, api_client, project, photo_jpeg, no_warmup):
    fleet.ensure_workers(2)
    images = [upload(api_client, project, f"c{i}.jpg", photo_jpeg(10 + i, PHOTO_SIDE)) for i in range(3)]
    first, second = (ask(api_client, image["id"], "the astronaut", SLOW) for image in images[:2])
    waiting = ask(api_client, images[2]["id"], "the astronaut", QUICK)

    def both_workers_busy():
        rows = [job_row(first), job_row(second)]
        for row in rows:
            assert row.state in ("queued", "running"), (
                f"job {row.pk} ended early: {row.state} {row.worker} {row.error}"
            )
        return all(row.state == "running" and row.progress >= 0.1 for row in rows)

    wait_while_progressing(
        both_workers_busy,
        progress=lambda: jobs_progress([first, second]),
        what="two jobs running",
        logs=fleet.log_paths(),
        interval=0.05,
    )
    assert job_row(waiting).state == "queued"
    cancelled = api_client.post(f"/api/jobs/{waiting}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"

    running = api_client.post(f"/api/jobs/{first}/cancel/")
    assert running.status_code == 200 and running.json()["state"] == "cancelled", running.json()
    # The engine checks the flag between batches (issue 15): the job stops mid-engine, not after it.
    wait_while_progressing(
        lambda: bool(  # at a cancellation checkpoint or at a progress report, both inside the engine run
            re.search(
                rf"Job {first} stopped (between two batches|at a progress report): it was cancelled \(or "
                r"taken over\); nothing written",
                fleet.all_logs(),
            )
        ),
        progress=lambda: jobs_progress([first, second]),
        what=f"the engine to stop cancelled job {first} between two batches",
        logs=fleet.log_paths(),
    )
    # The worker is free for the next job at once: a new job runs to the end while the other worker is busy.
    after = ask(api_client, images[2]["id"], "the flag", QUICK)
    (other,) = wait_for_jobs(fleet, [second])
    assert other.state == "succeeded", other.error
    (next_job,) = wait_for_jobs(fleet, [after])
    assert next_job.state == "succeeded", next_job.error
    wait_while_progressing(
        lambda: f"Job {waiting} is not claimable" in fleet.all_logs(),
        progress=lambda: jobs_progress([waiting]),
        what=f"a worker to receive cancelled job {waiting} and skip it",
        logs=fleet.log_paths(),
    )
    for job_id in (first, waiting):
        job = job_row(job_id)
        assert job.state == "cancelled" and job.candidates.count() == 0
    assert job_row(waiting).attempts == 0


def test_lost_refine_request_and_benchmark_shard_are_run_again_by_live_workers(
    fleet, api_client, project, user, photo_jpeg, no_warmup, tmp_path
):
    """A refine request and a benchmark shard whose worker vanished (a ghost claimed each and never beat)
    are taken back by the periodic reconciler once their heartbeat is stale and finished once by a live
    worker: the life a job has in ``test_worker_killed_mid_job_is_finished_once_by_another``."""
    from server.benchmarks import services as benchmarks
    from server.benchmarks.models import BenchmarkSentenceResult, BenchmarkShard
    from server.ris.models import Image
    from server.web.models import RefineRequest
    from server.web.services.refine import refine_request_claim, refine_request_create
    from workers.engine.data.synthetic import write_synthetic_refcoco
    from workers.tasks import engine_access

    fleet.ensure_workers(2)
    image = upload(api_client, project, "lost.jpg", photo_jpeg(30, PHOTO_SIDE))
    with pytest.MonkeyPatch.context() as patch:  # the ghost claims before a live worker sees any message
        patch.setattr("server.web.services.refine.refine_request_dispatch", lambda **kwargs: True)
        refine = refine_request_create(
            image=Image.objects.get(pk=image["id"]), requested_by=user, points_xy=[[64, 40]], labels=[1]
        )
    assert refine_request_claim(request_id=refine.pk, worker="ghost@gone", task_id="lost-refine")

    root = tmp_path / "refer"
    write_synthetic_refcoco(root, 2, seed=1)
    spec = {
        "dataset": "refcoco",
        "split": "val",
        "split_by": "unc",
        "pipelines": ["global_local"],
        "data_root": str(root),
        "configs": {"global_local": QUICK},
    }
    run = benchmarks.run_create(spec=spec, distributed=True)
    groups = engine_access.benchmark_spec(spec).open_dataset().images()
    (shard,) = benchmarks.shards_create(
        run=run, shards=[([g.image_id for g in groups], sum(len(g.sentences) for g in groups))]
    )
    assert benchmarks.shard_claim(shard_id=shard.pk, worker="ghost@gone", task_id="lost-shard")

    def both_finished():
        rows = RefineRequest.objects.get(pk=refine.pk), BenchmarkShard.objects.get(pk=shard.pk)
        return (
            rows if rows[0].state in ("succeeded", "failed") and rows[1].state in ("done", "failed") else None
        )

    def both_progress():
        refine_row = RefineRequest.objects.filter(pk=refine.pk).values_list("state", "attempts", "worker")
        shard_row = BenchmarkShard.objects.filter(pk=shard.pk).values()
        return list(refine_row), [tuple(row.values()) for row in shard_row]

    refined, ran = wait_while_progressing(
        both_finished,
        progress=both_progress,
        what="the lost refine and shard to finish",
        logs=fleet.log_paths(),
    )
    assert refined.state == "succeeded", refined.error
    assert refined.attempts == 2 and not refined.worker.startswith("ghost@")
    assert refined.result_rle["size"] == [PHOTO_SIDE, PHOTO_SIDE] and refined.result_area > 0
    assert ran.state == "done", ran.error
    assert ran.attempts == 2 and not ran.worker.startswith("ghost@")
    assert BenchmarkSentenceResult.objects.filter(run=run).count() == ran.n_sentences > 0
    logs = fleet.all_logs()
    assert f"sent again [{refine.pk}], failed [] (refine requests)" in logs
    assert f"sent again [{shard.pk}], failed [] (benchmark shards)" in logs


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a 302 is an answer here, not something to follow
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _http(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


@pytest.fixture
def web_server(fleet: Fleet) -> Iterator[str]:
    """gunicorn with production settings, on the same proxied database as the workers."""
    port = free_port(18000)
    env = {
        **fleet.env,
        "RIS_ENV": "production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(48),
        "DJANGO_SECURE_COOKIES": "false",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
    }
    log_path = fleet.logs / "gunicorn.log"
    command = [
        sys.executable, "-m", "gunicorn", "server.config.wsgi:application", "--bind", f"127.0.0.1:{port}",
        "--workers", "1", "--timeout", "60",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _http_ok(f"{base}/healthz"), timeout=600, what="gunicorn", logs=[log_path])
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


def _http_ok(url: str) -> bool:
    try:
        return _http(url)[0] == 200
    except OSError:
        return False


def test_database_unreachable_web_answers_503_and_workers_back_off(
    fleet, web_server, api_client, project, photo_jpeg, no_warmup
):
    from server.ris.services import job_dispatch

    fleet.ensure_workers(2)
    image = upload(api_client, project, "d.jpg", photo_jpeg(20, PHOTO_SIDE))

    fleet.proxy.close()  # PostgreSQL is gone for the web server and the workers
    try:
        status, kind, body = _http(f"{web_server}/api/projects/", {"Authorization": "Token " + "a" * 40})
        assert status == 503 and kind.startswith("application/json"), (status, body)
        assert "database is unavailable" in body
        status, kind, body = _http(
            f"{web_server}/projects/{project.pk}/", {"Cookie": f"sessionid={'k' * 32}"}
        )
        assert status == 503 and kind.startswith("text/html") and "database is unavailable" in body, body
        status, _, body = _http(f"{web_server}/healthz")
        assert status == 503 and "database unreachable" in body

        from server.ris.services import expression_create

        with pytest.MonkeyPatch.context() as patch:  # create the job now, send it only while the db is away
            patch.setattr("server.ris.services.expressions.job_enqueue_on_commit", lambda **kwargs: None)
            from server.ris.models import Image

            expression = expression_create(
                image=Image.objects.get(pk=image["id"]), text="the sky", author=None, config=QUICK
            )
        job_id = expression.jobs.get().pk
        assert job_dispatch(job_id=job_id)
        wait_while_progressing(
            lambda: "Retry in 2.0s" in fleet.all_logs() and "Retry in 4.0s" in fleet.all_logs(),
            progress=lambda: jobs_progress([job_id]),
            what="the worker to retry with backoff (2 s, then 4 s)",
            logs=fleet.log_paths(),
        )
        assert job_row(job_id).state == "queued"
    finally:
        fleet.proxy.open()
    (job,) = wait_for_jobs(fleet, [job_id])
    assert job.state == "succeeded" and job.attempts == 1, (job.state, job.error)
    assert _http(f"{web_server}/healthz")[0] == 200
    assert "OperationalError" in fleet.all_logs()
