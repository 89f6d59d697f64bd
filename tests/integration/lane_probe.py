"""A test-only task on the real Celery app, for the lane tests: a unit of work that records when it ran.

``workers.celery_app.app`` with its real settings (broker, transport, routes, prefetch, late acks), plus
``lane_probe.unit``: sleep ``seconds`` and append ``{"tag", "lane", "worker", "start", "end"}`` (wall-clock
seconds) as one JSON line to ``log_path``. Started as ``celery -A tests.integration.lane_probe worker``.
The ``send`` entry point sends units from a separate process, so the sender uses the settings of the
broker under test: ``python -m tests.integration.lane_probe send LOG LANE SECONDS TAG...``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from workers.celery_app import app

UNIT = "lane_probe.unit"


@app.task(name=UNIT, bind=True, acks_late=True)
def unit(self, tag: str, lane: str, seconds: float, log_path: str) -> str:
    """Sleep ``seconds`` and record the run; returns ``tag``."""
    start = time.time()
    time.sleep(seconds)
    record = {
        "tag": tag,
        "lane": lane,
        "queue": (self.request.delivery_info or {}).get("routing_key"),
        "worker": f"{self.request.hostname or socket.gethostname()}:{os.getpid()}",
        "start": start,
        "end": time.time(),
    }
    with open(log_path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    return tag


def send(log_path: str, lane: str, seconds: float, tags: list[str]) -> None:
    """Send one unit per tag to ``lane``'s queue, in the order given; print the send time of each."""
    from workers.celery_app import ensure_broker_folders
    from workers.lanes import lane_queue

    ensure_broker_folders()
    for tag in tags:
        app.send_task(UNIT, args=[tag, lane, seconds, log_path], queue=lane_queue(lane))
        print(json.dumps({"tag": tag, "sent": time.time()}), flush=True)


def records(log_path: Path) -> list[dict]:
    """The units run so far, in the order they finished."""
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    if len(sys.argv) < 6 or sys.argv[1] != "send":
        sys.exit("usage: python -m tests.integration.lane_probe send LOG LANE SECONDS TAG...")
    import django

    django.setup()
    send(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5:])
