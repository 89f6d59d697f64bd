"""Lanes and order on the real brokers: the embedded one (``workers.broker_fs``) and Redis.

Real ``celery worker`` processes (solo pool, prefetch 1, as ``make run`` starts them), one per lane, run
``lane_probe.unit`` tasks that sleep and record when they ran. What must hold on both brokers:

- order: a lane's messages are delivered in the order they were sent;
- lanes: a worker of one lane never runs the other lane's work;
- a background flood does not delay an interactive unit beyond one unit of background work.

Waits are on observable progress (the units' records), with generous ceilings.
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

from tests.integration.conftest import purge_broker
from tests.integration.lane_probe import records
from tests.integration.probe_worker import READY_CEILING_S, ProbeWorker, wait_for_records
from workers.broker_fs import message_name

ROOT = Path(__file__).resolve().parents[2]
UNIT_S = 2.5
FLOOD = 5


def test_embedded_broker_names_sort_in_send_order():
    names = [message_name("interactive") for _ in range(2000)]
    assert sorted(names) == names
    assert len({len(name) for name in names}) == 1  # fixed width: text order is number order
    assert all(name.endswith(".interactive.msg") for name in names)


def _burst_order(connection) -> list[int]:
    queue = connection.SimpleQueue(f"order-probe-{uuid.uuid4().hex[:6]}")
    try:
        for i in range(300):  # back to back: many land in one millisecond
            queue.put(i)
        got = []
        for _ in range(300):
            message = queue.get(timeout=30)
            message.ack()
            got.append(message.payload)
        return got
    finally:
        queue.clear()
        queue.close()
        connection.default_channel.queue_delete(queue.queue.name)


def test_embedded_broker_delivers_a_burst_in_order(tmp_path):
    # kombu's own filesystem transport returned 105 of 299 neighbours out of order in this burst.
    from kombu import Connection

    folders = {key: str(tmp_path / key) for key in ("data_folder_in", "processed_folder")}
    folders["data_folder_out"] = folders["data_folder_in"]
    for folder in folders.values():
        Path(folder).mkdir(exist_ok=True)
    with Connection(
        "filesystem://", transport="workers.broker_fs:Transport", transport_options=folders
    ) as conn:
        assert _burst_order(conn) == list(range(300))
    assert not list((tmp_path / "data_folder_in").iterdir())  # every message taken, nothing half-written left


@pytest.mark.services
def test_redis_delivers_a_burst_in_order():
    from kombu import Connection

    broker = settings.CELERY_BROKER_URL
    if not broker.startswith("redis://"):
        pytest.fail(
            f"this test needs CELERY_BROKER_URL=redis://... (got {broker!r}); run it through `make test`"
        )
    with Connection(broker) as conn:
        assert _burst_order(conn) == list(range(300))


def _env(broker: str, base: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "CELERY_BROKER_URL": broker,
        "RIS_BROKER_DIR": str(base / "broker"),
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "server.config.settings",
    }
    env.setdefault("DATABASE_URL", "sqlite:///" + str(base / "unused.sqlite3"))
    return env


@pytest.fixture(params=["embedded", "redis"])
def broker_env(request, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "embedded":
        yield _env("filesystem://", tmp_path)
        return
    broker = settings.CELERY_BROKER_URL
    if not broker.startswith("redis://"):
        pytest.fail(
            f"this test needs CELERY_BROKER_URL=redis://... (got {broker!r}); run it through `make test`"
        )
    purge_broker(broker)
    yield _env(broker, tmp_path)
    purge_broker(broker)


PROBE_APP = "tests.integration.lane_probe"


def _send(env: dict[str, str], log: Path, lane: str, seconds: float, tags: list[str]) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-m", "tests.integration.lane_probe", "send", str(log), lane, str(seconds), *tags],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    sent = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {item["tag"]: item["sent"] for item in sent}


@pytest.mark.services
@pytest.mark.slow
def test_lanes_hold_order_holds_and_a_flood_delays_interactive_work_at_most_one_unit(broker_env, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    units = tmp_path / "units.jsonl"
    interactive = ProbeWorker(PROBE_APP, broker_env, "interactive", logs)
    background = ProbeWorker(PROBE_APP, broker_env, "background", logs)
    workers = [interactive, background]
    try:
        for worker in workers:
            worker.wait_ready()
        flood = [f"b{i:02d}" for i in range(FLOOD)]
        _send(broker_env, units, "background", UNIT_S, flood)
        _wait_for(units, {flood[0]}, READY_CEILING_S, workers)  # the flood is being worked on
        sent = _send(broker_env, units, "interactive", 0.1, ["i00"])["i00"]
        done = _wait_for(units, {"i00", *flood}, READY_CEILING_S, workers)

        by_tag = {item["tag"]: item for item in done}
        first = by_tag["i00"]
        assert first["worker"].startswith(interactive.name) and first["queue"] == "interactive"
        assert all(by_tag[tag]["worker"].startswith(background.name) for tag in flood)
        # Order: the background lane ran its units in the order they were sent.
        assert [item["tag"] for item in done if item["tag"] in flood] == flood
        assert sorted(flood, key=lambda tag: by_tag[tag]["start"]) == flood
        # At most one background unit ended between sending the interactive unit and its start.
        waited_for = [tag for tag in flood if sent <= by_tag[tag]["end"] <= first["start"]]
        assert len(waited_for) <= 1, (waited_for, first["start"] - sent)

        # Order again, on a burst of quick messages sent back to back in both lanes.
        burst = [f"o{i:03d}" for i in range(40)]
        _send(broker_env, units, "background", 0.0, burst)
        quick = [f"q{i:03d}" for i in range(20)]
        _send(broker_env, units, "interactive", 0.0, quick)
        done = _wait_for(units, {*burst, *quick}, READY_CEILING_S, workers)
        assert [item["tag"] for item in done if item["tag"] in burst] == burst
        assert [item["tag"] for item in done if item["tag"] in quick] == quick
        assert {item["queue"] for item in done if item["tag"] in quick} == {"interactive"}
    finally:
        for worker in workers:
            worker.stop()


def _wait_for(log: Path, tags: set[str], ceiling_s: float, workers: list[ProbeWorker]) -> list[dict]:
    """Wait until every unit in ``tags`` has a record, as long as units keep finishing (progress)."""
    return wait_for_records(
        lambda: records(log),
        lambda done: tags <= {item["tag"] for item in done},
        what=f"units {sorted(tags)}",
        workers=workers,
        stall_s=ceiling_s,
    )
