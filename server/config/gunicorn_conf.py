"""gunicorn settings of the web container and of scripts/loadtest.py (``gunicorn -c server/config/gunicorn_conf.py``).

Threaded workers (``gthread``): a client's keep-alive connection is kept instead of a new TCP connection
per request, a slow client holds one thread instead of a whole process, and each thread keeps its own
persistent PostgreSQL connection (``CONN_MAX_AGE``, on by default in production). Every value can be
changed from the environment: ``WEB_CONCURRENCY`` (processes, default 4), ``WEB_THREADS``
(threads per process, default 4), ``WEB_BIND`` (default 0.0.0.0:8000), ``WEB_TIMEOUT`` (seconds, 60),
``WEB_ACCESS_LOG`` ("-" for stdout, empty for none).
"""

from __future__ import annotations

import os

bind = os.environ.get("WEB_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", 4))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", 4))
timeout = int(os.environ.get("WEB_TIMEOUT", 60))
keepalive = 75
# A worker is replaced after this many requests (plus jitter), so a slow leak cannot grow without bound.
max_requests = 10_000
max_requests_jitter = 1_000
accesslog = os.environ.get("WEB_ACCESS_LOG", "-") or None
