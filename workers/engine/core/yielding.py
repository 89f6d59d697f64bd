"""Background work that yields: pause at the engine's checkpoints while someone waits at the screen.

On a machine with few cores the interactive and the background worker processes compete for the CPU,
so a refine click or a typed expression is slowed by a background prepare running beside it. A caller
that runs background work (the worker's task layer, ``workers.tasks.yielding``) wraps it in::

    with yielding(interactive_work_running, min_interval_s=0.5, max_wait_s=120) as stats:
        engine.prepare(...)

and every :func:`~workers.engine.core.meter.checkpoint` inside the block (between decoder batches of the
mask generator, crops, encoder blocks, stages, model calls: one *unit* of work each) asks
``should_wait()`` (at most once per ``min_interval_s``: it may be a database query) and, while it
answers True, sleeps instead of working, asking again every ``min_interval_s``. So interactive work
waits for at most the unit of background work already under way.

The ceiling: one pause lasts at most ``max_wait_s``; after a pause cut short by the ceiling the block does
not pause again until ``should_wait()`` has answered False once, so an interactive job that is stuck (or
simply very long) delays each piece of background work by at most one ceiling, never starves it.

While paused the block stays cancellable: ``while_paused`` (the cancellation check, from ``checkpoint``)
runs at each ask and may raise. Outside a ``yielding`` block a checkpoint never pauses. The engine stays
free of what ``should_wait`` asks (a database, a file, a flag): it only calls it.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class YieldStats:
    """What a ``yielding`` block did: ``pauses`` begun, ``paused_s`` seconds slept in them, ``ceilings``
    (pauses cut short by ``max_wait_s``), ``asks`` (calls of ``should_wait``), ``where`` (the checkpoint
    name of each pause, in order)."""

    pauses: int = 0
    paused_s: float = 0.0
    ceilings: int = 0
    asks: int = 0
    where: list[str] = field(default_factory=list)


@dataclass
class _Yield:
    should_wait: Callable[[], bool]
    min_interval_s: float
    max_wait_s: float
    sleep: Callable[[float], None]
    clock: Callable[[], float]
    stats: YieldStats
    last_asked: float = float("-inf")
    after_ceiling: bool = False  # a pause hit the ceiling: no new pause until should_wait answers False

    def ask(self) -> bool:
        self.last_asked = self.clock()
        self.stats.asks += 1
        busy = bool(self.should_wait())
        if not busy:
            self.after_ceiling = False
        return busy


_YIELD: contextvars.ContextVar[_Yield | None] = contextvars.ContextVar("ris_yield", default=None)


@contextmanager
def yielding(
    should_wait: Callable[[], bool],
    *,
    min_interval_s: float = 0.5,
    max_wait_s: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[YieldStats]:
    """Let checkpoints inside the block pause while ``should_wait()`` answers True (see the module).

    Args:
        should_wait: True while interactive work runs (called at most once per ``min_interval_s``).
        min_interval_s: seconds between two asks, also the sleep of one step of a pause (> 0).
        max_wait_s: the ceiling of one pause, seconds (>= 0; 0 never pauses).
        sleep, clock: injectable for tests (``time.sleep``, ``time.monotonic``).

    Yields the block's :class:`YieldStats`. Raises ``ValueError`` for a non-positive interval or a
    negative ceiling.
    """
    if not min_interval_s > 0:
        raise ValueError(f"min_interval_s must be > 0 seconds (got {min_interval_s!r}).")
    if not max_wait_s >= 0:
        raise ValueError(f"max_wait_s must be >= 0 seconds (got {max_wait_s!r}).")
    stats = YieldStats()
    state = _Yield(should_wait, float(min_interval_s), float(max_wait_s), sleep, clock, stats)
    token = _YIELD.set(state)
    try:
        yield stats
    finally:
        _YIELD.reset(token)


def pause_if_asked(where: str = "", *, while_paused: Callable[[], None] | None = None) -> None:
    """Pause here while interactive work runs (inside a ``yielding`` block; otherwise return at once).

    ``while_paused`` is called at each ask during a pause (the cancellation check: it may raise, which
    ends the pause). Cheap between two asks: a context-variable read and a clock read.
    """
    state = _YIELD.get()
    if state is None or state.max_wait_s <= 0:
        return
    if state.clock() - state.last_asked < state.min_interval_s:
        return
    if not state.ask() or state.after_ceiling:
        return
    state.stats.pauses += 1
    state.stats.where.append(where)
    started = state.clock()
    try:
        while True:
            waited = state.clock() - started
            if waited >= state.max_wait_s:
                state.stats.ceilings += 1
                state.after_ceiling = True
                return
            state.sleep(min(state.min_interval_s, state.max_wait_s - waited))
            if while_paused is not None:
                while_paused()
            if not state.ask():
                return
    finally:
        state.stats.paused_s += state.clock() - started
