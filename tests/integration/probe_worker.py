"""Real worker processes for the integration tests: a ``celery worker`` of a probe app serving one queue,
waiting on the records its units write, and the test database's URL for a child process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Seconds a worker may take to start (a loaded machine imports Django and Celery slowly).
READY_CEILING_S = 180


class ProbeWorker:
    """``celery -A <app> worker -Q <queue>`` (solo pool, one message at a time), its log in ``logs``."""

    def __init__(self, app: str, env: dict[str, str], queue: str, logs: Path) -> None:
        self.name = f"{queue}-{uuid.uuid4().hex[:6]}"
        self.log_path = logs / f"{self.name}.log"
        command = [
            sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue,
            "--pool", "solo", "--concurrency", "1", "--prefetch-multiplier", "1", "--loglevel", "INFO",
            "-n", f"{self.name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def wait_ready(self) -> None:
        """Return once the worker says it is ready; fail if it exits or is not ready in ``READY_CEILING_S``."""
        deadline = time.monotonic() + READY_CEILING_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"worker {self.name} exited with {self.process.returncode}:\n{self.log()}")
            if " ready." in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.5)
        pytest.fail(f"worker {self.name} not ready after {READY_CEILING_S} s:\n{self.log()}")

    def stop(self, timeout_s: float = 60) -> None:
        """Ask for a warm shutdown; kill after ``timeout_s``."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def wait_for_records(
    read: Callable[[], list[dict[str, Any]]],
    done: Callable[[list[dict[str, Any]]], bool],
    *,
    what: str,
    workers: list[ProbeWorker],
    stall_s: float,
) -> list[dict[str, Any]]:
    """Poll ``read()`` until ``done(records)``, as long as records keep appearing: fail after ``stall_s``
    without a new one (progress, not a fixed timeout, so a loaded machine only waits longer), or when a
    worker exits. Returns the records."""
    last_progress, seen = time.monotonic(), 0
    while True:
        got = read()
        if done(got):
            return got
        if len(got) > seen:
            seen, last_progress = len(got), time.monotonic()
        if time.monotonic() - last_progress > stall_s:
            logs = "\n".join(f"--- {w.name}\n{w.log()}" for w in workers)
            pytest.fail(f"nothing new for {stall_s} s while waiting for {what}; got {got}\n{logs}")
        for worker in workers:
            if worker.process.poll() is not None:
                pytest.fail(f"worker {worker.name} exited:\n{worker.log()}")
        time.sleep(0.2)


def database_url(settings_dict: dict[str, Any]) -> str:
    """The PostgreSQL URL of a Django connection's settings (the test database), for a child process."""
    user = quote(settings_dict.get("USER") or "postgres", safe="")
    password = f":{quote(settings_dict['PASSWORD'], safe='')}" if settings_dict.get("PASSWORD") else ""
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or "5432"
    return f"postgres://{user}{password}@{host}:{port}/{settings_dict['NAME']}"
