"""A 3-second, 5-client run of scripts/loadtest.py against the real production server it starts (gunicorn,
RIS_ENV=production) on the test database and the test Redis: the script works end to end, finds no error,
reports both request kinds, and leaves nothing behind. The full run (50 clients, 60 s) is in
docs/perf/load.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection

from server.ris.models import Project
from tests.faults.procs import ROOT, database_url

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def test_short_load_run_has_no_error_and_cleans_up(tmp_path):
    if connection.vendor != "postgresql" or not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.fail("the load test needs PostgreSQL and Redis (run it through `make test`)")
    report_path = tmp_path / "load.json"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(connection.settings_dict),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
    }
    result = subprocess.run(
        [sys.executable, "scripts/loadtest.py", "--clients", "5", "--duration", "3", "--web-workers", "2",
         "--json-out", str(report_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["errors"] == 0 and report["clients"] == 5
    assert set(report["by_kind"]) == {"create expression", "poll job"}
    assert report["jobs_created"] >= 1 and report["all"]["requests"] > report["jobs_created"]
    assert 0 < report["all"]["p50_ms"] <= report["all"]["p95_ms"]
    assert report["broker_messages_removed"] == report["jobs_created"]
    assert "p95 ms" in result.stdout
    assert not get_user_model().objects.filter(username__startswith="load-").exists()
    assert not Project.objects.filter(name__startswith="load test").exists()
