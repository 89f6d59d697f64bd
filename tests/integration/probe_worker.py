"""A real ``celery worker`` process of a probe app serving one queue, for the lane and yield tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

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
