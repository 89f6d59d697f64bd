"""Background work yields to interactive work, with real worker processes on the real brokers (the embedded
one and Redis) and the real database: while an interactive job runs, a background task of many units does
at most one unit (the one under way when the job started), then resumes once the job is done.

Two ``celery worker`` processes, one per lane, as ``make run`` starts them (solo pool, prefetch 1), run
``tests.integration.yield_probe``: the background task steps through units of ``UNIT_S`` seconds inside
the task layer's own yielding hook (an engine checkpoint before each unit, the real selector asking the
test database); the interactive task claims a real interactive ``SegmentationJob`` with the real claim
service once some background units are done, and holds it ``HOLD_S`` seconds. Both record wall-clock
times per unit. Waits are on observable progress (records appearing), with generous ceilings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from server.ris.models import JobState, SegmentationJob
from server.ris.services import expression_create
from tests.integration.conftest import purge_broker
from tests.integration.probe_worker import ProbeWorker, database_url, wait_for_records
from tests.integration.yield_probe import BACKGROUND, INTERACTIVE, records
from tests.server.factories import image_make, job_of

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
STALL_CEILING_S = 180  # seconds without any new record before the test gives up
UNIT_S = 0.5
POLL_S = 0.1  # RIS_BACKGROUND_YIELD_POLL_S of the background worker: less than a unit, so every unit asks
HOLD_S = 5.0  # the interactive job: ten units' worth
UNITS_BEFORE = 3


@pytest.fixture(params=["embedded", "redis"])
def broker_env(request, tmp_path: Path, transactional_db, require_postgres) -> Iterator[dict[str, str]]:
    broker = "filesystem://"
    if request.param == "redis":
        broker = settings.CELERY_BROKER_URL
        if not broker.startswith("redis://"):
            pytest.fail(
                f"this test needs CELERY_BROKER_URL=redis://... (got {broker!r}); run it through `make test`"
            )
        purge_broker(broker)
    yield {
        **os.environ,
        "CELERY_BROKER_URL": broker,
        "RIS_BROKER_DIR": str(tmp_path / "broker"),
        "DATABASE_URL": database_url(connection.settings_dict),
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "server.config.settings",
        "RIS_BACKGROUND_YIELD": "true",
        "RIS_BACKGROUND_YIELD_POLL_S": str(POLL_S),
        "RIS_BACKGROUND_YIELD_MAX_S": "900",  # generous: the job's end must end the pause, not the ceiling
        "RIS_BACKGROUND_NICE": "5",
    }
    if request.param == "redis":
        purge_broker(broker)


PROBE_APP = "tests.integration.yield_probe"


def _send(env: dict[str, str], task: str, queue: str, args: list) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.integration.yield_probe", "send", task, queue, json.dumps(args)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


@pytest.fixture
def interactive_job(project, user, monkeypatch) -> SegmentationJob:
    """A queued interactive job in the test database; nothing is sent for it (the probe claims it)."""
    monkeypatch.setattr("server.ris.services.dispatch.task_send", lambda *a, **k: "not-sent")
    monkeypatch.setattr("server.ris.services.images.task_send", lambda *a, **k: "not-sent")
    image = image_make(project, user)
    return job_of(expression_create(image=image, text="the cat", author=user))


def test_a_background_task_does_at_most_one_unit_while_an_interactive_job_runs(
    broker_env, interactive_job, tmp_path
):
    logs = tmp_path / "logs"
    logs.mkdir()
    units, stop = tmp_path / "units.jsonl", tmp_path / "stop"
    interactive = ProbeWorker(PROBE_APP, broker_env, "interactive", logs)
    background = ProbeWorker(PROBE_APP, broker_env, "background", logs)
    workers = [interactive, background]
    try:
        for worker in workers:
            worker.wait_ready()
        _send(broker_env, BACKGROUND, "background", [str(units), UNIT_S, str(stop)])
        args = [interactive_job.pk, HOLD_S, str(units), str(units), UNITS_BEFORE]
        _send(broker_env, INTERACTIVE, "interactive", args)

        def resumed(got: list[dict]) -> bool:  # two units began after the interactive job ended
            job = next((item for item in got if item["tag"] == "interactive"), None)
            return job is not None and sum(u["start"] >= job["end"] for u in got if u["tag"][0] == "u") >= 2

        _wait(units, resumed, "the interactive job and two background units after it", workers)
        stop.touch()
        got = _wait(units, lambda got: any(i["tag"] == "summary" for i in got), "the summary", workers)

        by_tag = {item["tag"]: item for item in got}
        job, summary = by_tag["interactive"], by_tag["summary"]
        unit_records = [item for item in got if item["tag"].startswith("u")]
        assert [u["tag"] for u in unit_records] == [f"u{i:03d}" for i in range(len(unit_records))]
        before = [u for u in unit_records if u["end"] <= job["start"]]
        during = [u for u in unit_records if u["start"] < job["end"] and u["end"] > job["start"]]
        after = [u for u in unit_records if u["start"] >= job["end"]]
        assert len(before) >= UNITS_BEFORE  # the background task was working when the job began ...
        # ... did at most the one unit under way while the job ran (ten would fit in HOLD_S) ...
        assert len(during) <= 1, (during, job)
        assert len(before) + len(during) + len(after) == len(unit_records)
        # ... and resumed once it was done: the pause ended with the job, not at the ceiling.
        assert len(after) >= 2 and summary["pauses"] >= 1 and summary["ceilings"] == 0
        paused_from = during[0]["end"] if during else job["start"]  # the pause began at the next unit
        assert summary["paused_s"] >= job["end"] - paused_from - 0.5, (summary, job, during)
        assert summary["nice"] >= 5  # the background-only worker lowered its CPU priority
        assert SegmentationJob.objects.get(pk=interactive_job.pk).state == JobState.SUCCEEDED
    finally:
        for worker in workers:
            worker.stop()


def _wait(log: Path, done: Callable[[list[dict]], bool], what: str, workers: list[ProbeWorker]) -> list[dict]:
    """Wait until ``done(records)``, as long as records keep appearing (progress), else fail."""
    return wait_for_records(lambda: records(log), done, what=what, workers=workers, stall_s=STALL_CEILING_S)
