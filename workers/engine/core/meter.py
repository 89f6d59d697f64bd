"""A meter of model calls and seconds, per stage and per model.

Job timings (the worker) and cost columns (the benchmark) read it::

    with meter.stage("proposals"):
        ...
    meter.count("clip_vit_b_16", n=3)          # three forward calls
    with meter.model_call("sam_vit_b"):        # one call, timed
        ...
    meter.snapshot()  # {"stages": {"proposals": {"calls": 1, "seconds": 0.8}}, "models": {...}}

Code that calls models but does not own a meter (the wrappers the model hub keeps, shared by every pipeline)
records into the *active* meter, :func:`current_meter`: a pipeline activates its meter while it works
(``with meter.active(): ...``), so a model call is counted where the work was asked for.

The meter is shared by one engine, and its totals are guarded by a lock. To read the cost of one piece of
work while other threads use the same meter, wrap it in :meth:`Meter.capture`: records made by this thread
inside the block also go to the returned private meter.

Cancellation rides on the same hook. A caller that can cancel (the worker: a job's Cancel button) wraps the
work in ``with cancellation(is_cancelled): ...``; the engine calls :func:`checkpoint` between batches (every
``Meter.stage`` and ``Meter.model_call`` entry, every decoder batch of the mask generator, every crop), and
``checkpoint`` raises :class:`~workers.engine.core.errors.CancelledError` once ``is_cancelled()`` answers
True. ``is_cancelled`` is asked at most every ``min_interval_s`` seconds (it may be a database query).
Outside a ``cancellation`` block ``checkpoint`` does nothing.
Yielding rides on it too (``workers.engine.core.yielding``): inside a ``yielding`` block (background work)
``checkpoint`` pauses while interactive work runs, and stays cancellable while paused.
Progress for the page: :meth:`Meter.watch` registers a listener, for one thread, that hears each stage
as it starts (``listener(name, None, None, "")``) and each :meth:`Meter.progress` report inside a stage
(``listener("proposals", 3, 16, "point batches")``: done, total, unit). A listener's errors propagate:
that is how a worker stops the engine when its job was cancelled.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from workers.engine.core.errors import CancelledError
from workers.engine.core.yielding import pause_if_asked

Listener = Callable[[str, "int | None", "int | None", str], None]


@dataclass
class _Tally:
    calls: int = 0
    seconds: float = 0.0


class Meter:
    """Counts calls and seconds per stage name and per model name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, _Tally] = {}
        self._models: dict[str, _Tally] = {}
        self._local = threading.local()

    # -- recording -------------------------------------------------------------------------------
    def _targets(self) -> list[Meter]:
        return [self, *getattr(self._local, "captures", [])]

    def _record(self, table: str, name: str, calls: int, seconds: float) -> None:
        for target in self._targets():
            with target._lock:
                tally = getattr(target, table).setdefault(name, _Tally())
                tally.calls += calls
                tally.seconds += seconds

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; each entry adds one call and the elapsed seconds (also when it raises)."""
        checkpoint(name)
        self._tell(name, None, None, "")
        start = time.perf_counter()
        try:
            yield
        finally:
            self._record("_stages", name, 1, time.perf_counter() - start)

    def progress(self, name: str, done: int, total: int, unit: str = "") -> None:
        """Report ``done`` of ``total`` ``unit`` in stage ``name`` to this thread's listeners (no tally)."""
        self._tell(name, int(done), int(total), unit)

    def _tell(self, name: str, done: int | None, total: int | None, unit: str) -> None:
        for target in self._targets():
            for listener in list(getattr(target._local, "listeners", ())):
                listener(name, done, total, unit)

    @contextmanager
    def watch(self, listener: Listener) -> Iterator[None]:
        """Call ``listener(name, done, total, unit)`` on each stage start and progress report of this thread."""
        listeners = getattr(self._local, "listeners", None)
        if listeners is None:
            listeners = self._local.listeners = []
        listeners.append(listener)
        try:
            yield
        finally:
            listeners.remove(listener)

    def count(self, model_name: str, n: int = 1) -> None:
        """Add ``n`` calls of ``model_name`` (no seconds)."""
        self._record("_models", model_name, n, 0.0)

    @contextmanager
    def model_call(self, model_name: str, n: int = 1) -> Iterator[None]:
        """Add ``n`` calls of ``model_name`` and the seconds spent in the block."""
        checkpoint(model_name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self._record("_models", model_name, n, time.perf_counter() - start)

    @contextmanager
    def capture(self) -> Iterator[Meter]:
        """A private meter that also receives everything this thread records inside the block."""
        private = Meter()
        stack = getattr(self._local, "captures", None)
        if stack is None:
            stack = self._local.captures = []
        stack.append(private)
        try:
            yield private
        finally:
            stack.remove(private)

    @contextmanager
    def active(self) -> Iterator[Meter]:
        """Make this meter :func:`current_meter` for the block (in this thread / context)."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    # -- reading ---------------------------------------------------------------------------------
    def calls(self, model_name: str) -> int:
        """Calls counted for one model so far."""
        with self._lock:
            tally = self._models.get(model_name)
            return tally.calls if tally else 0

    def stage_calls(self, name: str) -> int:
        with self._lock:
            tally = self._stages.get(name)
            return tally.calls if tally else 0

    def snapshot(self) -> dict[str, dict[str, dict[str, float]]]:
        """JSON-ready copy: ``{"stages": {name: {"calls", "seconds"}}, "models": {name: {...}}}``."""
        with self._lock:
            return {
                "stages": {k: {"calls": v.calls, "seconds": v.seconds} for k, v in self._stages.items()},
                "models": {k: {"calls": v.calls, "seconds": v.seconds} for k, v in self._models.items()},
            }

    def reset(self) -> None:
        with self._lock:
            self._stages.clear()
            self._models.clear()


_DISCARD = Meter()
_ACTIVE: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("ris_active_meter", default=None)


def current_meter() -> Meter:
    """The meter activated by the innermost ``Meter.active()`` block; a throw-away meter outside any."""
    return _ACTIVE.get() or _DISCARD


# ------------------------------------------------------------------------------------------------------
# Cancellation


class _Cancellation:
    def __init__(self, is_cancelled: Callable[[], bool], min_interval_s: float) -> None:
        self.is_cancelled = is_cancelled
        self.min_interval_s = min_interval_s
        self.last_asked = float("-inf")
        self.cancelled = False
        self.checks = 0


_CANCELLATION: contextvars.ContextVar[_Cancellation | None] = contextvars.ContextVar(
    "ris_cancellation", default=None
)


@contextmanager
def cancellation(is_cancelled: Callable[[], bool], *, min_interval_s: float = 0.5) -> Iterator[None]:
    """Let :func:`checkpoint` calls inside the block stop the work once ``is_cancelled()`` is True."""
    token = _CANCELLATION.set(_Cancellation(is_cancelled, min_interval_s))
    try:
        yield
    finally:
        _CANCELLATION.reset(token)


def checkpoint(where: str = "") -> None:
    """A point between batches where the work may stop or pause.

    Raises ``CancelledError`` once cancelled (inside a :func:`cancellation` block); inside a
    :func:`~workers.engine.core.yielding.yielding` block (background work) it pauses while interactive work
    runs, and stays cancellable while paused. Cheap outside both blocks (two context-variable reads) and
    between two asks.
    """
    _raise_if_cancelled(where)
    pause_if_asked(where, while_paused=lambda: _raise_if_cancelled(where))


def _raise_if_cancelled(where: str) -> None:
    state = _CANCELLATION.get()
    if state is None:
        return
    if not state.cancelled:
        now = time.monotonic()
        if now - state.last_asked < state.min_interval_s:
            return
        state.last_asked = now
        state.checks += 1
        state.cancelled = bool(state.is_cancelled())
    if state.cancelled:
        raise CancelledError(f"cancelled while running ({where})" if where else "cancelled while running")
