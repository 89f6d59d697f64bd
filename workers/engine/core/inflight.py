"""Image work under way in another worker process: an in-progress marker beside the disk cache entry,
and a wait for that entry while the marker is live and its work nearly done.

Why: an upload queues ``prepare_image`` in the background lane; a job typed on that image a moment later
runs in the interactive lane, in another process, and would start the same automatic masks from scratch,
both then sharing the CPU and both finishing late. Instead, the process that computes a value marks it:
``<cache entry>.inflight.json`` next to where the value will be written (``FeatureCache.cache_dir``), with
its process, host, start time, heartbeat and progress (``done`` of ``total`` units). Another process that
misses the value reads the marker and waits (telling its listener ``waiting done total``, which a job shows
as "waiting for image preparation, k of n points") for the value to appear, while:

- the marker is live: its heartbeat is younger than ``stale_s`` and, on this host, its process exists;
- its work is near its end: the time left, from its own pace (seconds since its start per unit done,
  times the units left), is at most ``max_wait_s``; with no unit done yet, it started at most
  ``max_wait_s`` ago.

Otherwise (no marker, a stale or dead one, a slow or far-off one, or a wait past ``max_wait_s`` more than
the estimate promised) the caller computes the value itself, as it would have without markers. A marker
is written atomically (temporary file renamed into place) and removed when its work ends, successful or
not; a crash leaves a stale one, which is ignored after ``stale_s`` and replaced by the next computer.

No marker without a disk cache (``cache_dir`` ``None``): processes then share nothing to wait for.

With background work that yields (``workers.engine.core.yielding``): a preparer paused for interactive work
stops beating, so a job would find its marker stale after ``stale_s`` and compute itself. The task layer
therefore does not count a job in stage ``waiting`` as interactive work (``interactive_work_running``): the
preparer a job waits for goes on at full speed, while it still pauses for everyone else.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: A marker whose heartbeat is older than this is dead (its process hung or was killed), in seconds.
STALE_S = 20.0
#: Wait for another process's work only when it should end within this many seconds.
MAX_WAIT_S = 120.0
#: Seconds between two looks at the marker and the cache entry while waiting.
POLL_S = 0.25
#: Seconds between two heartbeats written by the computing process (progress reports in between are
#: not written, so a fast generator does not write a file per batch).
BEAT_S = 1.0

#: ``on_wait(done, total)``: the other process's progress while waiting; may raise (a cancelled job).
WaitCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class MarkerState:
    """What a marker says. Times are seconds since the epoch (``time.time()``), comparable across
    processes of one host and, roughly, across hosts with synchronised clocks."""

    pid: int
    host: str
    started: float
    heartbeat: float
    done: int
    total: int

    @classmethod
    def from_json(cls, data: Any) -> MarkerState | None:
        try:
            return cls(
                pid=int(data["pid"]),
                host=str(data["host"]),
                started=float(data["started"]),
                heartbeat=float(data["heartbeat"]),
                done=int(data["done"]),
                total=int(data["total"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def alive(self, now: float, stale_s: float) -> bool:
        """Heartbeat younger than ``stale_s`` and, on this host, the process still exists."""
        if now - self.heartbeat > stale_s:
            return False
        if self.host == socket.gethostname() and self.pid != os.getpid():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:  # exists, owned by someone else
                return True
        return True

    def seconds_left(self, now: float) -> float | None:
        """Its time left at its own pace so far; ``None`` before its first unit is done."""
        if self.done <= 0 or self.total <= 0:
            return None
        return (now - self.started) / self.done * max(0, self.total - self.done)


def marker_path(entry: Path) -> Path:
    """The marker beside cache file ``entry`` (``<entry>.inflight.json``)."""
    return entry.with_name(entry.name + ".inflight.json")


def read_marker(entry: Path) -> MarkerState | None:
    """The marker of cache file ``entry``, or ``None`` (none, or unreadable: treated as none)."""
    try:
        return MarkerState.from_json(json.loads(marker_path(entry).read_text()))
    except (OSError, ValueError):
        return None


class Marker:
    """The computing side's marker of one cache entry; :meth:`beat` records progress (at most every
    ``beat_s`` seconds, and always the first time)."""

    def __init__(
        self, entry: Path, *, beat_s: float = BEAT_S, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = marker_path(entry)
        self._beat_s = beat_s
        self._clock = clock
        self._started = clock()
        self._last = float("-inf")
        self._total = 0

    def beat(self, done: int = 0, total: int = 0, *, force: bool = False) -> None:
        """Write the heartbeat with ``done`` of ``total`` units (at once when ``total`` is new); a failed
        write is logged, never raised."""
        now = self._clock()
        if not force and total == self._total and now - self._last < self._beat_s:
            return
        self._last, self._total = now, total
        state = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": self._started,
            "heartbeat": now,
            "done": int(done),
            "total": int(total),
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w") as handle:
                json.dump(state, handle)
            os.replace(tmp, self.path)
        except OSError:
            log.warning("could not write the in-progress marker %s", self.path, exc_info=True)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@contextmanager
def marking(entry: Path | None, *, beat_s: float = BEAT_S) -> Iterator[Marker | None]:
    """Mark cache file ``entry`` as being computed by this process for the block's duration
    (``None``: no disk cache, no marker)."""
    if entry is None:
        yield None
        return
    marker = Marker(entry, beat_s=beat_s)
    marker.beat(force=True)
    try:
        yield marker
    finally:
        marker.remove()


def wait_for_peer(
    entry: Path | None,
    read_value: Callable[[], Any | None],
    *,
    on_wait: WaitCallback | None = None,
    max_wait_s: float = MAX_WAIT_S,
    stale_s: float = STALE_S,
    poll_s: float = POLL_S,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Any | None:
    """The value another process is computing into cache file ``entry``, once there; ``None`` when
    there is nothing worth waiting for (see the module docstring): then compute it yourself.

    ``read_value()`` reads the cache (``None``: not there yet). ``on_wait(done, total)`` hears the other
    process's progress at each look (its errors propagate: a cancelled job stops waiting).
    """
    if entry is None:
        return None
    waited_since = clock()
    promised: float | None = None
    while True:
        marker = read_marker(entry)
        now = clock()
        if marker is None or not marker.alive(now, stale_s):
            return read_value() if marker is None else None  # finished just now (or never began); or dead
        left = marker.seconds_left(now)
        if left is None:
            if now - marker.started > max_wait_s:
                return None
        elif left > max_wait_s:
            return None
        if left is not None:
            promised = max(promised or 0.0, now - waited_since + left)
        if now - waited_since > (promised or 0.0) + max_wait_s:
            log.info(
                "waited %.0f s for %s, longer than promised; computing it here", now - waited_since, entry
            )
            return None
        if on_wait is not None:
            on_wait(marker.done, marker.total)
        value = read_value()
        if value is not None:
            return value
        sleep(poll_s)
