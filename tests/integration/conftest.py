"""Fixtures of the integration tests, which run against the real Redis and PostgreSQL (``make test``).

- ``real_broker``: the Redis broker URL from ``CELERY_BROKER_URL``, with the job queues purged before
  and after the test, so messages from an earlier or a later run never meet this run's job ids. Fails
  (does not skip) when the broker is not Redis: these tests exist to run against the real services.
- ``require_postgres``: fails unless the test database is PostgreSQL (a worker process must share it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings
from django.db import connection

QUEUE_KEY_PATTERNS = ("interactive*", "background*", "default*", "unacked*")


def purge_broker(broker_url: str) -> None:
    """Drop the job queues' messages (every priority level) and kombu's unacked bookkeeping."""
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        for pattern in QUEUE_KEY_PATTERNS:
            keys = list(client.scan_iter(match=pattern))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def real_broker() -> Iterator[str]:
    broker = settings.CELERY_BROKER_URL
    if not broker.startswith("redis://"):
        pytest.fail(
            f"this test needs CELERY_BROKER_URL=redis://... (got {broker!r}); run it through `make test`"
        )
    purge_broker(broker)
    yield broker
    purge_broker(broker)


@pytest.fixture
def require_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.fail(
            f"this test needs DATABASE_URL=postgres://... (got {connection.vendor}); run it through `make test`"
        )
