"""Background work yields to interactive work: the task layer's side of ``workers.engine.core.yielding``.

A background task (``prepare_image``, a background-lane job, a benchmark shard) runs its engine work
inside :func:`background_yielding`: every engine checkpoint (a decoder batch, a crop, an encoder block)
then asks the database, at most every ``RIS_BACKGROUND_YIELD_POLL_S``, whether interactive work is
running anywhere (``server.web.selectors.interactive_work_running``: an interactive job or a refine
request with a live heartbeat) and pauses while it is, for at most ``RIS_BACKGROUND_YIELD_MAX_S`` per
pause. So an interactive job waits for at most the one unit of background work under way, even where the
two lanes' worker processes share two cores. ``RIS_BACKGROUND_YIELD=false`` turns it off.

The engine never sees Django: it is handed a plain ``() -> bool``, as the cancellation hook is.
:func:`lower_priority` is the other half: a worker process that consumes only the background lane lowers
its CPU priority (``os.nice(RIS_BACKGROUND_NICE)``) when it starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import InterfaceError, OperationalError

from workers.engine.core.yielding import YieldStats, yielding
from workers.lanes import BACKGROUND, lane_queue

logger = logging.getLogger(__name__)


def interactive_busy() -> bool:
    """True while interactive work runs; False (work goes on) when the database cannot answer."""
    from server.web.selectors import interactive_work_running

    try:
        return interactive_work_running()
    except (OperationalError, InterfaceError) as error:
        logger.warning("Could not ask whether interactive work is running (%s); not pausing", error)
        return False


@contextmanager
def background_yielding(what: str) -> Iterator[YieldStats | None]:
    """Run the block as background work that pauses while interactive work runs (see the module).

    ``what`` names the work in the log ("Image 12", "Job 7"). Yields the block's ``YieldStats``, or None
    when ``RIS_BACKGROUND_YIELD`` is off (the block then runs as it is).
    """
    if not settings.RIS_BACKGROUND_YIELD:
        yield None
        return
    with yielding(
        interactive_busy,
        min_interval_s=float(settings.RIS_BACKGROUND_YIELD_POLL_S),
        max_wait_s=float(settings.RIS_BACKGROUND_YIELD_MAX_S),
    ) as stats:
        try:
            yield stats
        finally:
            if stats.pauses:
                logger.info(
                    "%s yielded to interactive work %s time%s (%.1f s paused%s)",
                    what,
                    stats.pauses,
                    "" if stats.pauses == 1 else "s",
                    stats.paused_s,
                    f", {stats.ceilings} cut short by RIS_BACKGROUND_YIELD_MAX_S" if stats.ceilings else "",
                )


def background_only(queues: Iterable[str]) -> bool:
    """True when a worker consumes the background lane's queue and nothing else."""
    names = set(queues)
    return bool(names) and names == {lane_queue(BACKGROUND)}


def lower_priority(queues: Iterable[str]) -> int | None:
    """Lower this process's CPU priority by ``RIS_BACKGROUND_NICE`` if it serves only the background lane.

    Returns the new niceness, or None when nothing was changed (another lane served, the setting is 0, or
    the system refused).
    """
    step = int(settings.RIS_BACKGROUND_NICE)
    if step <= 0 or not background_only(queues):
        return None
    try:
        niceness = os.nice(step)
    except OSError as error:
        logger.warning("Could not lower the background worker's CPU priority (%s)", error)
        return None
    logger.info("Background worker: CPU priority lowered by %s (niceness %s)", step, niceness)
    return niceness
