#!/usr/bin/env python3
"""Where the web tier's CPU goes for the load test's two requests, in-process (no network, no gunicorn).

Starts Django with production settings on ``DATABASE_URL`` (PostgreSQL) and ``CELERY_BROKER_URL``
(Redis), makes one user, project and image, then runs ``--requests`` times each of
``POST /api/images/{id}/expressions/`` and ``GET /api/jobs/{id}/`` through Django's WSGI handler with a
token, under cProfile. Prints the CPU per request (process time, milliseconds) and the top functions by
cumulative time; cleans up what it made.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/ris_prof CELERY_BROKER_URL=redis://127.0.0.1:6379/5 \\
        python scripts/profile_request.py --requests 200   # PROFILE_SORT=tottime to sort by own time
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    os.environ.update(
        {
            "RIS_ENV": "production",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(48),
            "DJANGO_ALLOWED_HOSTS": "testserver",
            "RIS_PREPARE_ON_UPLOAD": "false",
        }
    )
    import loadtest  # the load script's fixtures: one project, one image, users with tokens

    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="ris-prof-") as scratch:
        loadtest.database_ensure(os.environ["DATABASE_URL"])
        import subprocess

        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True)
        loadtest.django_setup(Path(scratch))
        from django.test import Client

        image_id, tokens, _ = loadtest.fixtures_create(1, run)
        client = Client(HTTP_AUTHORIZATION=f"Token {tokens[0]}")
        try:
            created = client.post(
                f"/api/images/{image_id}/expressions/", {"text": "warm up"}, content_type="application/json"
            ).json()
            job_id = created["job"]["id"]
            for kind, call in (
                (
                    "create expression",
                    lambda i: client.post(
                        f"/api/images/{image_id}/expressions/",
                        {"text": f"the object {i}"},
                        content_type="application/json",
                    ),
                ),
                ("poll job", lambda i: client.get(f"/api/jobs/{job_id}/")),
            ):
                profiler = cProfile.Profile()
                started = time.process_time()
                profiler.enable()
                for i in range(args.requests):
                    response = call(i)
                    assert response.status_code in (200, 201), response.content[:300]
                profiler.disable()
                cpu_ms = (time.process_time() - started) * 1000 / args.requests
                print(f"\n== {kind}: {cpu_ms:.1f} ms CPU per request (profiler on; {args.requests} requests)")
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats(
                    os.environ.get("PROFILE_SORT", "cumulative")
                ).print_stats(args.top)
                print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])
        finally:
            job_ids = loadtest.fixtures_delete(run)
            loadtest.broker_messages_remove(os.environ["CELERY_BROKER_URL"], set(job_ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
