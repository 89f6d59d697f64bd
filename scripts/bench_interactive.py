#!/usr/bin/env python3
"""The interactive loop, measured against the real stack: what an annotator waits for.

Starts what ``make run`` starts (``scripts/serve-dev.sh``: the web server and the workers it starts) on a
throwaway state folder (media, cache, embedded broker), a PostgreSQL database of its own (dropped and made
again) and the broker chosen (``--broker embedded``: kombu's filesystem transport as configured by the
code under test; ``--broker redis``: the Redis of ``--redis-url``, its lane queues purged first). The
engine runs the ``tiny`` profile: real MobileSAM for every mask, random-weight stand-ins for CLIP, so
the figures are times, never quality. Through the HTTP API, as the page does, it measures:

1. first candidates on a new image: upload a photo (scikit-image's astronaut, 512 x 512; the upload
   queues its background preparation as usual) and at once type an expression on it; the time from the
   expression's POST to the job's candidates (the job succeeded), and to its early candidates (the job's
   ``partial`` flag: a coarse grid's ranking, shown on the page while the full run goes on), when it had any;
2. with ``--flood`` background jobs queued (bulk CSV rows on other photos, which are also preparing), 20
   refine clicks on the now prepared astronaut, one after the other (each from its POST to its mask):
   p50 / p95 / max; a click that does not answer within ``--click-timeout`` ends the series;
3. in the same flood, an expression typed on the prepared astronaut: POST to candidates.

``--root`` runs another checkout's stack (e.g. a worktree of main, for the baseline) with this script.
Prints the figures and writes them as JSON (``--json-out``). Needs PostgreSQL (``--database-url``) and,
for ``--broker redis``, Redis.

    python scripts/bench_interactive.py --broker embedded --json-out /tmp/i13-embedded.json
    python scripts/bench_interactive.py --broker redis --root /work/wt/base13
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
POLL_S = 0.1


def photo_png(name: str) -> bytes:
    """A scikit-image sample photo as PNG bytes (longest side cut to 512 so all cost alike)."""
    from PIL import Image
    from skimage import data

    picture = Image.fromarray(getattr(data, name)()).convert("RGB")
    picture.thumbnail((512, 512))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def database_fresh(database_url: str) -> None:
    """Drop and create the database of ``database_url`` (it is this script's own)."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg
    from psycopg import sql

    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(("postgresql", parts.netloc, "/postgres", "", ""))
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def redis_purge(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    for pattern in ("interactive*", "background*", "gpu*", "default*", "unacked*", "_kombu*"):
        keys = list(client.scan_iter(match=pattern))
        if keys:
            client.delete(*keys)


def run(command: list[str], env: dict[str, str], root: Path) -> str:
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result.stdout


MAKE_USER = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from server.ris.services import project_create
user = get_user_model().objects.create_user(username="bench", password="{password}")
project = project_create(name="Interactive bench", created_by=user)
print("TOKEN", Token.objects.create(user=user).key, "PROJECT", project.pk)
"""


class Stack:
    """``scripts/serve-dev.sh`` of ``root`` with ``env``; stopped (all its processes) on ``stop``."""

    def __init__(self, root: Path, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                ["bash", "scripts/serve-dev.sh"],
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


class Client:
    def __init__(self, base: str, token: str, stack: Stack) -> None:
        self.base = base
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"
        self.stack = stack
        self.early_s: float | None = None  # of the last wait_job
        self.retries: list[str] = []

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; a 503 or a dropped connection (a loaded machine) is tried again, up to 10 times."""
        for attempt in range(10):
            try:
                response = self.session.request(method, self.base + path, timeout=120, **kwargs)
            except requests.ConnectionError as error:
                self.retries.append(f"{method} {path}: {error}")
                time.sleep(min(5.0, 0.5 * 2**attempt))
                continue
            if response.status_code == 503 and method == "GET":
                self.retries.append(f"{method} {path}: 503")
                time.sleep(min(5.0, 0.5 * 2**attempt))
                continue
            if response.status_code >= 400:
                raise SystemExit(f"{method} {path}: {response.status_code} {response.text[:500]}")
            return response.json()
        raise SystemExit(f"{method} {path}: no answer after 10 tries: {self.retries[-3:]}")

    def wait_job(self, job_id: int, ceiling_s: float, since: float | None = None) -> tuple[dict, float]:
        """Poll the job until it ends; (job, seconds waited). Fails after ``ceiling_s``. ``self.early_s``:
        seconds from ``since`` (``perf_counter``; default: now) until the job first showed early
        candidates (``partial``), or None."""
        started = time.perf_counter()
        origin = started if since is None else since
        self.early_s = None
        while True:
            job = self.call("GET", f"/api/jobs/{job_id}/")
            if job.get("partial") and self.early_s is None:
                self.early_s = time.perf_counter() - origin
            if job["state"] not in ("queued", "running"):
                return job, time.perf_counter() - started
            if time.perf_counter() - started > ceiling_s:
                return job, float("inf")
            if self.stack.process.poll() is not None:
                raise SystemExit(f"the stack exited:\n{self.stack.log()}")
            time.sleep(POLL_S)


def wait_up(base: str, stack: Stack, ceiling_s: float = 180) -> None:
    deadline = time.monotonic() + ceiling_s
    while time.monotonic() < deadline:
        if stack.process.poll() is not None:
            raise SystemExit(f"the stack exited:\n{stack.log()}")
        try:
            requests.get(base + "/accounts/login/", timeout=5)
            return
        except requests.RequestException:
            time.sleep(1)
    raise SystemExit(f"the web server did not answer within {ceiling_s} s:\n{stack.log()}")


def workers_ready(stack: Stack, count: int, ceiling_s: float = 300) -> None:
    deadline = time.monotonic() + ceiling_s
    while time.monotonic() < deadline:
        if stack.log_path.read_text(errors="replace").count(" ready.") >= count:
            return
        time.sleep(1)
    raise SystemExit(f"{count} worker(s) not ready within {ceiling_s} s:\n{stack.log()}")


def bench(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.root).resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-interactive-"))
    broker = "filesystem://" if args.broker == "embedded" else args.redis_url
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "server.config.settings",
        "DATABASE_URL": args.database_url,
        "CELERY_BROKER_URL": broker,
        "RIS_VAR_DIR": str(work),
        "RIS_BROKER_DIR": str(work / "broker"),
        "RIS_MEDIA_ROOT": str(work / "media"),
        "RIS_CACHE_DIR": str(work / "cache"),
        "RIS_MODEL_DIR": str(Path(args.model_dir).resolve()),
        "RIS_MODEL_PROFILE": "tiny",
        "RIS_DEVICE": "cpu",
        "RIS_REFINE_STALE_SECONDS": str(max(300, int(args.click_timeout) + 60)),
        "PY": str(Path(sys.executable)),
        "HOST": "127.0.0.1",
        "PORT": str(args.port),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DJANGO_SECRET_KEY", None)
    database_fresh(args.database_url)
    if args.broker == "redis":
        redis_purge(args.redis_url)
    python = str(Path(sys.executable))
    run([python, "manage.py", "migrate", "--noinput"], env, root)
    made = run(
        [python, "manage.py", "shell", "-c", MAKE_USER.format(password=secrets.token_urlsafe(12))], env, root
    )
    words = made.split()
    token, project = words[words.index("TOKEN") + 1], int(words[words.index("PROJECT") + 1])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    result: dict[str, Any] = {
        "root": str(root),
        "commit": commit.stdout.strip(),
        "broker": args.broker,
        "flood": args.flood,
        "points_per_side": args.points_per_side or "pipeline default (32)",
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
    }
    stack = Stack(root, env, work / "stack.log")
    base = f"http://127.0.0.1:{args.port}"
    try:
        wait_up(base, stack)
        serve = (root / "scripts/serve-dev.sh").read_text()
        workers = (3 if "RIS_INTERACTIVE_WORKERS" in serve else 2) if "background" in serve else 1
        workers_ready(stack, workers)
        result["worker_processes"] = workers
        client = Client(base, token, stack)

        def typed(text: str) -> dict[str, Any]:
            body: dict[str, Any] = {"text": text}
            if args.points_per_side:
                body["config"] = {"amg": {"points_per_side": args.points_per_side}}
            return body

        # 1. A new, unprepared photo: upload, type at once, wait for the candidates.
        upload = client.call(
            "POST",
            f"/api/projects/{project}/images/",
            files={"files": ("astronaut.png", photo_png("astronaut"))},
        )
        image = upload["images"][0]["id"]
        started = time.perf_counter()
        created = client.call("POST", f"/api/images/{image}/expressions/", json=typed("the person"))
        if args.click_during_first:
            # 1b. A click on the same image while the expression's job runs (its full grid, by then): the
            # first figure of this run is then not scenario 1's (the click shares the cores).
            time.sleep(args.click_during_first)
            clicked = time.perf_counter()
            req = client.call(
                "POST", "/web/refine/", json={"image": image, "points_xy": [[256, 256]], "labels": [1]}
            )
            while (
                req["state"] in ("queued", "running") and time.perf_counter() - clicked < args.click_timeout
            ):
                time.sleep(POLL_S)
                req = client.call("GET", f"/web/refine/{req['id']}/")
            waited = time.perf_counter() - clicked
            running = client.call("GET", f"/api/jobs/{created['job']['id']}/")
            result["click_during_first_s"] = waited if req["state"] == "succeeded" else None
            result["click_during_first_job_state"] = running["state"]
            print(
                f"[1b] click {args.click_during_first:.0f} s after the expression, its job {running['state']}: "
                f"{req['state']} after {waited:.2f} s",
                flush=True,
            )
        job, _ = client.wait_job(created["job"]["id"], args.first_timeout, since=started)
        first = time.perf_counter() - started
        result["first_candidates_s"] = first if job["state"] == "succeeded" else None
        # Early candidates (a coarse grid, shown on the page while the full run goes on), from the POST.
        result["first_early_candidates_s"] = client.early_s
        result["first_timed_out_after_s"] = first if job["state"] in ("queued", "running") else None
        result["first_job"] = {
            "state": job["state"],
            "error": job.get("error"),
            "timings": job.get("timings"),
        }
        print(f"[1] new image -> first candidates: {first:.1f} s ({job['state']})", flush=True)
        if client.early_s is not None:
            print(f"[1] new image -> early candidates: {client.early_s:.1f} s", flush=True)

        # 2. The flood: other photos (preparing in the background) and bulk rows on them.
        others = []
        for name in PHOTOS[1:]:
            client.call(
                "POST", f"/api/projects/{project}/images/", files={"files": (f"{name}.png", photo_png(name))}
            )
            others.append(f"{name}.png")
        rows = "image,expression\n" + "".join(
            f"{others[i % len(others)]},thing number {i}\n" for i in range(args.flood)
        )
        bulk = client.call(
            "POST", f"/web/projects/{project}/expressions/bulk/", files={"file": ("rows.csv", rows.encode())}
        )
        result["flood_created"] = len(bulk.get("created", []))
        print(
            f"[2] flood: {result['flood_created']} bulk jobs queued on {len(others)} new photos", flush=True
        )

        # 3. Refine clicks on the prepared astronaut, one after the other.
        clicks: list[float] = []
        click_errors: list[str] = []
        for i in range(args.clicks):
            point = [[200 + 5 * i, 200 + 3 * i]]
            started = time.perf_counter()
            req = client.call(
                "POST", "/web/refine/", json={"image": image, "points_xy": point, "labels": [1]}
            )
            while True:
                req = client.call("GET", f"/web/refine/{req['id']}/")
                waited = time.perf_counter() - started
                if req["state"] not in ("queued", "running") or waited > args.click_timeout:
                    break
                time.sleep(POLL_S)
            if req["state"] != "succeeded":
                click_errors.append(
                    f"click {i}: {req['state']} after {waited:.1f} s {req.get('error') or ''}"
                )
                print(f"[3] click {i}: {req['state']} after {waited:.1f} s; the series ends", flush=True)
                break
            clicks.append(waited)
            print(f"[3] click {i}: {waited:.2f} s", flush=True)
        result["clicks_s"] = clicks
        result["click_errors"] = click_errors
        if clicks:
            result["click_p50_s"] = statistics.median(clicks)
            result["click_p95_s"] = percentile(clicks, 0.95)
            result["click_max_s"] = max(clicks)

        # 4. An expression typed on the prepared astronaut, in the flood.
        started = time.perf_counter()
        created = client.call("POST", f"/api/images/{image}/expressions/", json=typed("the helmet"))
        job, _ = client.wait_job(created["job"]["id"], args.prepared_timeout)
        prepared = time.perf_counter() - started
        result["prepared_expression_s"] = prepared if job["state"] == "succeeded" else None
        result["prepared_timed_out_after_s"] = prepared if job["state"] in ("queued", "running") else None
        result["prepared_job"] = {
            "state": job["state"],
            "error": job.get("error"),
            "timings": job.get("timings"),
        }
        print(
            f"[4] prepared image, in the flood -> candidates: {prepared:.1f} s ({job['state']})", flush=True
        )
        jobs = [
            client.call("GET", f"/api/jobs/{item['job_id']}/")
            for item in bulk.get("created", [])[: args.flood]
        ]
        result["flood_still_active"] = sum(1 for j in jobs if j["state"] in ("queued", "running"))
        result["load_after"] = os.getloadavg()
        result["api_retries"] = len(client.retries)
        return result
    finally:
        stack.stop()
        (Path(args.log_dir) if args.log_dir else work).mkdir(parents=True, exist_ok=True)
        if args.log_dir:
            (Path(args.log_dir) / f"stack-{args.broker}.log").write_text(
                stack.log_path.read_text(errors="replace")
            )
        if args.broker == "redis":
            redis_purge(args.redis_url)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", choices=("embedded", "redis"), default="embedded")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2"))
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ris_i13b_bench"),
        help="a PostgreSQL database of this script's own: it is dropped and made again",
    )
    parser.add_argument("--model-dir", default=os.environ.get("RIS_MODEL_DIR", str(ROOT / "var" / "models")))
    parser.add_argument("--root", default=str(ROOT), help="the checkout whose stack runs (default: this one)")
    parser.add_argument("--port", type=int, default=8102)
    parser.add_argument("--flood", type=int, default=50, help="background jobs queued (bulk rows)")
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--click-timeout", type=float, default=300.0, help="seconds a click may take")
    parser.add_argument(
        "--first-timeout", type=float, default=1800.0, help="seconds the first expression may take"
    )
    parser.add_argument(
        "--prepared-timeout",
        type=float,
        default=600.0,
        help="seconds the expression on the prepared image may take",
    )
    parser.add_argument(
        "--points-per-side",
        type=int,
        default=0,
        help="SAM points per side of the typed expressions' automatic masks (0: the pipeline's, 32); "
        "the upload's preparation and the bulk rows keep the pipeline's",
    )
    parser.add_argument(
        "--click-during-first",
        type=float,
        default=0.0,
        help="seconds after the first expression to click once on the same image while its job runs "
        "(0: no such click); that run's first-candidates figure is then not scenario 1's",
    )
    parser.add_argument("--json-out", default="")
    parser.add_argument("--log-dir", default="", help="keep the stack's log here")
    args = parser.parse_args()
    result = bench(args)
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_job")}, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
