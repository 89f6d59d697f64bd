"""Selectors that background workers call run on the embedded default's database (SQLite) too.

The suite runs on PostgreSQL; a lookup that only PostgreSQL has (JSON ``contains``) passed there and broke
every background task of ``make run``. This test migrates a throwaway SQLite database in a subprocess and
asks ``interactive_work_running`` about real rows there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
from django.contrib.auth import get_user_model
from django.utils import timezone
from server.ris.models import JobLane, JobState, SegmentationJob
from server.ris.services import expression_create, project_create
from server.web.selectors import interactive_work_running
from tests.server.factories import image_make, job_of

user = get_user_model().objects.create_user("ann", password="pw-123456789")
project = project_create(name="p", created_by=user)
job = job_of(expression_create(image=image_make(project, user), text="the cat", author=user))
answers = [interactive_work_running()]  # queued: nobody's model is running
for lane, stage in [
    (JobLane.INTERACTIVE, {}),
    (JobLane.INTERACTIVE, {"name": "proposals", "done": 64, "total": 1024}),
    (JobLane.INTERACTIVE, {"name": "waiting", "done": 3, "total": 1024}),
    (JobLane.BACKGROUND, {"name": "proposals"}),
]:
    SegmentationJob.objects.filter(pk=job.pk).update(
        state=JobState.RUNNING, lane=lane, stage=stage, heartbeat_at=timezone.now()
    )
    answers.append(interactive_work_running())
print("ANSWERS", *answers)
"""


def test_interactive_work_running_on_sqlite(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CELERY_BROKER_URL": "filesystem://",
        "RIS_VAR_DIR": str(tmp_path / "var"),
        "RIS_PREPARE_ON_UPLOAD": "false",
        "DJANGO_SETTINGS_MODULE": "server.config.settings",
    }
    manage = [sys.executable, "manage.py"]
    migrated = subprocess.run(
        [*manage, "migrate", "-v", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr[-3000:]
    asked = subprocess.run(
        [*manage, "shell", "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert asked.returncode == 0, asked.stdout + asked.stderr[-3000:]
    line = next(line for line in asked.stdout.splitlines() if line.startswith("ANSWERS"))
    # queued; running with no stage; in proposals; waiting for a preparation; a background job
    assert line.split()[1:] == ["False", "True", "True", "False", "False"]
