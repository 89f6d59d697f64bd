"""Dispatch against the real Redis broker: messages land in their lane's queue, and
the reconciler's queue count sees them."""

from __future__ import annotations

import time

import pytest

from server.ris.services.dispatch import (
    BACKGROUND_QUEUE,
    JOB_QUEUE,
    PREPARE_IMAGE,
    RUN_SEGMENTATION_JOB,
    broker_queue_size,
    task_send,
)

pytestmark = pytest.mark.services


def test_sent_messages_are_counted_in_their_lanes_queue(real_broker):
    assert broker_queue_size(JOB_QUEUE) == 0
    assert task_send(RUN_SEGMENTATION_JOB, args=[987_654]) is not None
    assert task_send(PREPARE_IMAGE, args=[987_654]) is not None
    assert task_send(RUN_SEGMENTATION_JOB, args=[987_655], queue=BACKGROUND_QUEUE) is not None
    assert broker_queue_size(JOB_QUEUE) == 1
    assert broker_queue_size(BACKGROUND_QUEUE) == 2
    assert broker_queue_size("default") == 0


def test_unreachable_broker_is_reported_not_raised(monkeypatch):
    from celery import Celery

    import workers.celery_app

    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery lets it override any configured URL
    nowhere = Celery("probe", broker="redis://127.0.0.1:1/0")
    monkeypatch.setattr(workers.celery_app, "app", nowhere)
    started = time.perf_counter()
    assert task_send(RUN_SEGMENTATION_JOB, args=[1]) is None
    assert broker_queue_size(JOB_QUEUE) is None
    assert time.perf_counter() - started < 5  # a web request does not hang on a dead broker
