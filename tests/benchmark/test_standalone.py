"""``manage.py benchmark`` on a clone where only the install (or ``make test``) ran: no migrated database, no
model store. It migrates a fresh SQLite database and fills the offline store itself; with no database at all it
writes its report files and says how to store the run later. Never a traceback.

Real processes with real (MobileSAM + tiny stand-in) models on a 3-sentence synthetic set, with a 4x4 AMG
grid so the CPU cost stays small.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.engine.core.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow

BENCH = [
    "benchmark",
    "--dataset",
    "refcoco",
    "--split",
    "val",
    "--pipeline",
    "global_local",
    "--limit",
    "3",
    "--no-progress",
    "--config",
    "global_local.amg.points_per_side=4",
]


def _manage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_ROOT,
        env={**base, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=1500,
    )


def test_benchmark_on_a_fresh_clone_migrates_or_writes_files_only(tmp_path: Path) -> None:
    var = tmp_path / "var"
    env = {"RIS_VAR_DIR": str(var), "RIS_MODEL_DIR": str(tmp_path / "models")}
    made = _manage(["make_synthetic_refcoco", "--out", str(tmp_path / "syn"), "--images", "2"], env)
    assert made.returncode == 0, made.stderr
    assert not (var / "db.sqlite3").exists()

    done = _manage([*BENCH, "--data-root", str(tmp_path / "syn"), "--out", str(tmp_path / "a")], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "lacks" in done.stdout and "applying them first" in done.stdout
    assert "mobile_sam: missing, copied from package" in done.stdout  # the store was prepared
    assert "stored as run #1" in done.stdout
    assert (tmp_path / "a" / "summary.md").is_file()
    notices = [line for line in done.stderr.splitlines() if line.startswith("Notice:")]
    assert len(notices) == 1 and "models fetch --profile auto" in notices[0]

    no_db = {**env, "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none"}
    args = [*BENCH, "--data-root", str(tmp_path / "syn"), "--out", str(tmp_path / "b")]
    offline = _manage(args, no_db)
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert "Traceback" not in offline.stderr
    assert "cannot be reached" in offline.stderr and "written to files only" in offline.stderr
    assert "not stored in the database" in offline.stdout and "--resume" in offline.stdout
    assert (tmp_path / "b" / "summary.json").is_file()

    stored = _manage([*args, "--resume"], env)  # the command it printed, once a database is there
    assert stored.returncode == 0, stored.stderr[-3000:]
    assert "stored as run #2" in stored.stdout
