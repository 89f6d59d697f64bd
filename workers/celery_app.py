"""The Celery application shared by the web process (which only sends) and the workers.

This module never imports torch: the web process imports it to enqueue work by task name, and only a
worker imports the task modules of ``workers.tasks`` (listed in ``include``), which reach the engine
inside their task bodies.
Configuration comes from Django settings (``CELERY_*``), so it is read from the environment in
one place.

Queues: one per lane (``workers.lanes``: ``interactive`` for work a person waits for, ``background``
for the rest; model work, one solo worker process per lane and device, prefetch 1, late acks so a killed
worker's job is delivered again), ``default`` for light periodic work (the reconciler). The embedded
broker (``filesystem://``) is ``workers.broker_fs``: kombu's filesystem transport, delivering in order.
A worker that consumes only the background queue lowers its CPU priority as it starts
(``workers.tasks.yielding.lower_priority``, ``RIS_BACKGROUND_NICE``).
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from celery.signals import celeryd_after_setup, worker_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "server.config.settings")

app = Celery(
    "ris",
    include=[
        "workers.tasks.segmentation",
        "workers.tasks.refine",
        "workers.tasks.benchmark",
        "workers.tasks.reconcile",
    ],
)
app.config_from_object("django.conf:settings", namespace="CELERY")


def ensure_broker_folders() -> None:
    """Create the folders of kombu's filesystem transport (the embedded broker) if it is in use."""
    from django.conf import settings

    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
            Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS[key]).mkdir(parents=True, exist_ok=True)


@worker_init.connect
def _worker_init(**_: object) -> None:
    ensure_broker_folders()


@celeryd_after_setup.connect
def _worker_after_setup(instance: object, **_: object) -> None:
    """A worker that consumes only the background lane lowers its CPU priority (``RIS_BACKGROUND_NICE``)."""
    from workers.tasks.yielding import lower_priority

    lower_priority(instance.app.amqp.queues.consume_from or {})  # type: ignore[attr-defined]


@worker_ready.connect
def _worker_ready(**_: object) -> None:
    """Touch ``$RIS_WORKER_READY_FILE`` (when set) once the worker consumes, so ``make run`` prints its URL last."""
    marker = os.environ.get("RIS_WORKER_READY_FILE")
    if marker:
        Path(marker).touch()
