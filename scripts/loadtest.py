#!/usr/bin/env python3
"""Load test of the web tier: N concurrent API clients creating expressions and polling their jobs.

By default it starts the production server itself on loopback: ``gunicorn server.config.wsgi`` with
``RIS_ENV=production`` and a freshly generated ``DJANGO_SECRET_KEY``, on the PostgreSQL of
``DATABASE_URL`` and the Redis of ``CELERY_BROKER_URL`` (both required; the schema is migrated first).
It creates one user (and API token) per client, all members of one project holding one small image, so the
per-user job-creation rate limit stays the production one. No worker is started: jobs are created, sent to
Redis and polled while they queue, so the figures measure the web tier (request handling, PostgreSQL
writes and reads, the queue-position query, the broker publish), not the models.

Each client loops until the time is up: ``POST /api/images/{id}/expressions/`` (creates an expression and
its job, sends the job to Redis) then three ``GET /api/jobs/{id}/``. Every answer other than 201/200, and
every connection error, is an error. The run stops by itself after ``--duration`` seconds; afterwards the
script deletes what it created (project, users, their jobs) and removes its messages from the broker.

With ``--pace annotator`` each client instead behaves like a person at the annotation page: it creates
an expression every 20 s and polls its latest job every 2 s (start times spread over the first period),
so the figures are latencies at a realistic request rate rather than the most the server can take.

The server runs with ``server/config/gunicorn_conf.py`` (threaded workers, as the web image does);
``--gunicorn-conf none`` runs it as the web image did before (sync workers, the old flags), for a
baseline on older code.

    python scripts/loadtest.py                      # 50 closed-loop clients, 60 s
    python scripts/loadtest.py --pace annotator     # 50 annotators, 60 s
    python scripts/loadtest.py --clients 5 --duration 3 --json-out /tmp/load.json

It prints p50/p95/p99 latency per request kind and overall, throughput and the errors, and exits 1 if
there was any error.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
POLLS_PER_JOB = 3


@dataclass
class Tally:
    """Latencies (seconds) per request kind, and the errors, shared by the client threads."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, seconds: float, error: str | None = None) -> None:
        with self.lock:
            self.latencies[kind].append(seconds)
            if error is not None:
                self.errors.append(f"{kind}: {error}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ------------------------------------------------------------------------------------------- set-up


def database_ensure(database_url: str) -> None:
    """Create the database of ``database_url`` if the server does not have it yet."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg
    from psycopg import sql

    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    admin_url = urlunsplit(
        (parts.scheme.replace("postgres", "postgresql", 1), parts.netloc, "/postgres", "", "")
    )
    if not admin_url.startswith("postgresql"):
        admin_url = "postgresql" + admin_url[admin_url.index(":") :]
    with psycopg.connect(admin_url, autocommit=True) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def django_setup(media_root: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "server.config.settings")
    os.environ["RIS_MEDIA_ROOT"] = str(media_root)
    os.environ["RIS_PREPARE_ON_UPLOAD"] = "false"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def fixtures_create(clients: int, run: str) -> tuple[int, list[str], list[int]]:
    """One project with one image, ``clients`` member users with tokens. Returns (image id, tokens, user ids)."""
    from django.contrib.auth import get_user_model
    from django.core.files.uploadedfile import SimpleUploadedFile
    from PIL import Image as PILImage
    from rest_framework.authtoken.models import Token

    from server.ris.services import image_upload, project_create

    users = [
        get_user_model().objects.create_user(username=f"load-{run}-{i}", password=secrets.token_urlsafe(16))
        for i in range(clients)
    ]
    project = project_create(name=f"load test {run}", created_by=users[0])
    project.members.add(*users)
    buffer = io.BytesIO()
    PILImage.new("RGB", (64, 48), (40, 90, 160)).save(buffer, format="PNG")
    payload = buffer.getvalue() + run.encode()  # a unique image per run (PNG ignores trailing bytes)
    stored, rejected = image_upload(
        project=project, files=[SimpleUploadedFile("load.png", payload)], uploaded_by=users[0]
    )
    if rejected:
        raise SystemExit(f"could not store the load-test image: {rejected[0].error}")
    tokens = [Token.objects.create(user=user).key for user in users]
    return stored[0].image.pk, tokens, [user.pk for user in users]


def fixtures_delete(run: str) -> list[int]:
    """Delete the run's project (with its images, expressions, jobs) and users; return the job ids."""
    from django.contrib.auth import get_user_model

    from server.ris.models import Project, SegmentationJob

    projects = Project.objects.filter(name=f"load test {run}")
    job_ids = list(
        SegmentationJob.objects.filter(expression__image__project__in=projects).values_list("id", flat=True)
    )
    projects.delete()
    get_user_model().objects.filter(username__startswith=f"load-{run}-").delete()
    return job_ids


def broker_messages_remove(broker_url: str, job_ids: set[int]) -> int:
    """Remove this run's job messages from the Redis queues (kombu keeps one list per priority)."""
    import redis

    client = redis.Redis.from_url(broker_url)
    removed = 0
    try:
        # The lanes' queues (workers/lanes.py), and "gpu", the one queue before lanes.
        keys = {
            key
            for pattern in ("interactive*", "background*", "gpu*")
            for key in client.scan_iter(match=pattern)
        }
        for key in sorted(keys):
            if client.type(key) != b"list":
                continue
            for raw in client.lrange(key, 0, -1):
                try:
                    headers = json.loads(raw)["headers"]
                    job_id = json.loads(headers["argsrepr"])[0]
                except (ValueError, KeyError, TypeError, IndexError):
                    continue
                if headers.get("task") == "workers.tasks.run_segmentation_job" and job_id in job_ids:
                    removed += int(client.lrem(key, 1, raw))
    finally:
        client.close()
    return removed


def server_start(
    port: int, workers: int, media_root: Path, log_path: Path, conf: str = "server/config/gunicorn_conf.py"
) -> subprocess.Popen:
    env = {
        **os.environ,
        "RIS_ENV": "production",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(48),
        "DJANGO_SECURE_COOKIES": "false",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "RIS_MEDIA_ROOT": str(media_root),
        "RIS_PREPARE_ON_UPLOAD": "false",
        "WEB_CONCURRENCY": str(workers),
        "WEB_BIND": f"127.0.0.1:{port}",
        "WEB_ACCESS_LOG": "",
    }
    command = [
        sys.executable, "-m", "gunicorn", "server.config.wsgi:application", "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), "--timeout", "60", "--keep-alive", "75", "--log-level", "warning",
    ]  # fmt: skip
    if conf != "none":
        command[3:4] = ["-c", conf, "server.config.wsgi:application"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.3)
    process.terminate()
    raise SystemExit(f"gunicorn did not answer /healthz within 90 s:\n{log_path.read_text()[-3000:]}")


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its children (gunicorn's master and workers), from
    /proc: the web side's CPU, whatever else the machine runs. 0.0 where /proc is not there."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        pids = [pid] + [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return 0.0
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


# ------------------------------------------------------------------------------------------- clients


@dataclass
class Run:
    """What the clients share: the tally, a barrier they all pass once warmed up, and the end time."""

    tally: Tally
    start: threading.Barrier
    stop_at: float = 0.0
    pace: str = "closed"


def client_loop(host: str, port: int, token: str, image_id: int, run: Run, index: int) -> None:
    """One client: a warm-up request (not counted), then create-and-poll until ``run.stop_at``."""
    tally = run.tally
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    connection = http.client.HTTPConnection(host, port, timeout=30)
    sequence = 0

    def call(kind: str, method: str, path: str, body: bytes | None, expected: int) -> dict | None:
        nonlocal connection
        started = time.perf_counter()
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            tally.add(kind, time.perf_counter() - started, f"{type(error).__name__}: {error}")
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=30)
            return None
        elapsed = time.perf_counter() - started
        if response.status != expected:
            tally.add(kind, elapsed, f"HTTP {response.status}: {data[:200]!r}")
            return None
        tally.add(kind, elapsed)
        return json.loads(data)

    call("warm-up", "GET", "/api/pipelines/", None, 200)
    run.start.wait(timeout=300)  # all clients warmed up: the clock starts
    stop_at = run.stop_at
    if run.pace == "annotator":
        _annotator(call, image_id, index, stop_at)
        connection.close()
        return
    while time.monotonic() < stop_at:
        sequence += 1
        text = f"the object number {sequence} seen by client {index}".encode()
        created = call(
            "create expression",
            "POST",
            f"/api/images/{image_id}/expressions/",
            b'{"text": "' + text + b'"}',
            201,
        )
        if created is None:
            continue
        job_id = created["job"]["id"]
        for _ in range(POLLS_PER_JOB):
            if time.monotonic() >= stop_at:
                break
            call("poll job", "GET", f"/api/jobs/{job_id}/", None, 200)
    connection.close()


CREATE_EVERY_S = 20.0
POLL_EVERY_S = 2.0


def _annotator(call: Any, image_id: int, index: int, stop_at: float) -> None:
    """A person's pace: an expression every ``CREATE_EVERY_S``, a poll of its job every ``POLL_EVERY_S``.

    The first creation is at a random point of the first period (clients spread out, as people do);
    a late answer does not shift the schedule (the next request goes at its planned time, or at once).
    """
    rng = random.Random(index)
    start = time.monotonic()
    next_create = start + rng.uniform(0, CREATE_EVERY_S)
    next_poll = float("inf")
    job_id: int | None = None
    sequence = 0
    while True:
        due = min(next_create, next_poll)
        if due >= stop_at:
            return
        time.sleep(max(0.0, due - time.monotonic()))
        if due == next_create:
            sequence += 1
            text = f"the object number {sequence} seen by annotator {index}".encode()
            created = call(
                "create expression",
                "POST",
                f"/api/images/{image_id}/expressions/",
                b'{"text": "' + text + b'"}',
                201,
            )
            next_create += CREATE_EVERY_S
            if created is not None:
                job_id = created["job"]["id"]
                next_poll = time.monotonic() + POLL_EVERY_S
        else:
            call("poll job", "GET", f"/api/jobs/{job_id}/", None, 200)
            next_poll += POLL_EVERY_S


def run_load(
    host: str,
    port: int,
    tokens: list[str],
    image_id: int,
    duration: float,
    pace: str = "closed",
    on_start: Any = None,
) -> tuple[Tally, float]:
    tally = Tally()
    clock: dict[str, float] = {}

    def start_clock() -> None:  # run by one thread once all have arrived, before any goes on
        if on_start is not None:
            on_start()
        clock["started"] = time.monotonic()
        run.stop_at = clock["started"] + duration

    run = Run(tally=tally, start=threading.Barrier(len(tokens), action=start_clock), pace=pace)
    threads = [
        threading.Thread(target=client_loop, args=(host, port, token, image_id, run, i), daemon=True)
        for i, token in enumerate(tokens)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration + 420)
    tally.latencies.pop("warm-up", None)
    return tally, time.monotonic() - clock.get("started", time.monotonic())


def summarise(tally: Tally, elapsed: float, clients: int) -> dict[str, Any]:
    every = [value for values in tally.latencies.values() for value in values]

    def stats(values: list[float]) -> dict[str, float]:
        return {
            "requests": len(values),
            "p50_ms": round(percentile(values, 50) * 1000, 1),
            "p95_ms": round(percentile(values, 95) * 1000, 1),
            "p99_ms": round(percentile(values, 99) * 1000, 1),
            "mean_ms": round(statistics.fmean(values) * 1000, 1) if values else float("nan"),
        }

    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "throughput_rps": round(len(every) / elapsed, 1) if elapsed else 0.0,
        "jobs_created": len(tally.latencies.get("create expression", [])),
        "errors": len(tally.errors),
        "error_samples": tally.errors[:10],
        "all": stats(every),
        "by_kind": {kind: stats(values) for kind, values in sorted(tally.latencies.items())},
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{report['clients']} clients for {report['seconds']} s: {report['all']['requests']} requests, "
          f"{report['throughput_rps']} req/s, {report['jobs_created']} jobs created, {report['errors']} errors")  # fmt: skip
    print(f"{'kind':<20} {'requests':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for kind, row in [*report["by_kind"].items(), ("all", report["all"])]:
        print(f"{kind:<20} {row['requests']:>9} {row['p50_ms']:>8} {row['p95_ms']:>8} {row['p99_ms']:>8}")
    if "load_average" in report:
        print(f"pace {report['pace']}, gunicorn conf {report['gunicorn_conf']}, {report['web_workers']} workers, "
              f"load average at the end {report['load_average']}; web CPU {report['web_cpu_s']} s, "
              f"{report['web_cpu_ms_per_request']} ms per request")  # fmt: skip
    for sample in report["error_samples"]:
        print("error:", sample)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds of load (the run stops by itself)"
    )
    parser.add_argument(
        "--web-workers", type=int, default=2 * (os.cpu_count() or 1) + 1, help="gunicorn workers"
    )
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    parser.add_argument(
        "--pace",
        choices=["closed", "annotator"],
        default="closed",
        help="closed: each client sends its next request as soon as the last is answered; annotator: an "
        f"expression every {CREATE_EVERY_S:g} s and a poll every {POLL_EVERY_S:g} s per client",
    )
    parser.add_argument(
        "--gunicorn-conf",
        default="server/config/gunicorn_conf.py",
        help="gunicorn config file; 'none' for the old flags (sync workers), to measure older code",
    )
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0:
        parser.error("--clients must be at least 1 and --duration positive")
    database_url = os.environ.get("DATABASE_URL", "")
    broker_url = os.environ.get("CELERY_BROKER_URL", "")
    if not database_url.startswith("postgres") or not broker_url.startswith("redis://"):
        parser.error(
            "set DATABASE_URL=postgres://... and CELERY_BROKER_URL=redis://... (the production services)"
        )

    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="ris-load-") as scratch:
        media_root = Path(scratch) / "media"
        media_root.mkdir()
        database_ensure(database_url)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            check=True,
            env={**os.environ, "RIS_MEDIA_ROOT": str(media_root)},
        )
        django_setup(media_root)
        image_id, tokens, _ = fixtures_create(args.clients, run)
        port = free_port()
        server = server_start(
            port, args.web_workers, media_root, Path(scratch) / "gunicorn.log", conf=args.gunicorn_conf
        )
        try:
            print(f"gunicorn (RIS_ENV=production, {args.web_workers} workers) on 127.0.0.1:{port}; "
                  f"{args.clients} clients for {args.duration:g} s ...", flush=True)  # fmt: skip
            cpu_at_start: list[float] = []
            tally, elapsed = run_load(
                "127.0.0.1",
                port,
                tokens,
                image_id,
                args.duration,
                pace=args.pace,
                on_start=lambda: cpu_at_start.append(process_tree_cpu_seconds(server.pid)),
            )
            web_cpu = process_tree_cpu_seconds(server.pid) - (cpu_at_start[0] if cpu_at_start else 0.0)
        finally:
            server.terminate()
            server.wait(timeout=30)
            job_ids = fixtures_delete(run)
            removed = broker_messages_remove(broker_url, set(job_ids))
        report = summarise(tally, elapsed, args.clients)
        report.update(
            {
                "web_workers": args.web_workers,
                "cpu_count": os.cpu_count(),
                "broker_messages_removed": removed,
                "pace": args.pace,
                "gunicorn_conf": args.gunicorn_conf,
                "load_average": [round(value, 2) for value in os.getloadavg()],
                "web_cpu_s": round(web_cpu, 2),
                "web_cpu_ms_per_request": (
                    round(1000 * web_cpu / report["all"]["requests"], 1)
                    if report["all"]["requests"]
                    else None
                ),
            }
        )
    print_report(report)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report, indent=1))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
