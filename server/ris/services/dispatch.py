"""Hand messages to the broker by task name, so the web process never imports the tasks (or torch).

A broker that is down must not turn an upload or an expression into a 500: the row is already in the
database, which is the source of truth, and the reconciler (``server.ris.services.work.work_reconcile``)
sends what was never dispatched once the broker is back. So a failed send is logged and reported as ``None``.

The task names below are the workers' Celery names (``workers/tasks/``); they never change, because queued
messages must survive an upgrade.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from workers.lanes import BACKGROUND, INTERACTIVE, lane_queue

logger = logging.getLogger(__name__)

RUN_SEGMENTATION_JOB = "workers.tasks.run_segmentation_job"
PREPARE_IMAGE = "workers.tasks.prepare_image"
REFINE_MASK = "workers.web_tasks.refine_mask"
RUN_BENCHMARK_SHARD = "workers.benchmark_tasks.run_benchmark_shard"
RECONCILE = "workers.tasks.reconcile_jobs"
TASK_NAMES = (RUN_SEGMENTATION_JOB, PREPARE_IMAGE, REFINE_MASK, RUN_BENCHMARK_SHARD, RECONCILE)
# Lanes are queues (workers/lanes.py routes every task); priorities are not used: a lane is its own queue,
# served by its own workers, so background work never stands in front of interactive work.
JOB_QUEUE = lane_queue(INTERACTIVE)
BACKGROUND_QUEUE = lane_queue(BACKGROUND)

# A web request must not hang on a broker that is down: one quick retry, then the reconciler's turn.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def task_send(
    name: str, *, args: Sequence[Any], priority: int | None = None, queue: str | None = None
) -> str | None:
    """Send task ``name`` with ``args``; return the message id, or ``None`` if the broker refused it.

    ``queue`` overrides the task's route (``CELERY_TASK_ROUTES``); ``priority`` 0 is served first, 9 last.
    """
    from workers.celery_app import app

    options: dict[str, Any] = {}
    if priority is not None:
        options["priority"] = priority
    if queue:
        options["queue"] = queue
    try:
        result = app.send_task(
            name, args=list(args), retry=True, retry_policy=PUBLISH_RETRY_POLICY, **options
        )
    except Exception:  # the broker's errors vary by transport; the reconciler retries later
        logger.exception("Could not send %s%s to the broker; the reconciler will send it again", name, args)
        return None
    return str(result.id)


def broker_queue_size(queue: str) -> int | None:
    """Messages waiting in ``queue`` on the broker (not those a worker holds), or None if it cannot tell.

    A queue the broker does not know counts 0: that is what a broker restarted empty looks like.
    """
    from workers.celery_app import app

    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2)
            return int(connection.default_channel.queue_declare(queue=queue, passive=True).message_count)
    except Exception as error:
        if getattr(error, "reply_code", None) == 404 or "NOT_FOUND" in str(error):  # AMQP's and kombu's
            return 0
        # broker down, or a transport that cannot count: the caller falls back to timeouts
        logger.warning("Could not count the messages in queue %r", queue, exc_info=True)
        return None
