#!/usr/bin/env bash
# Serve the web app and one Celery worker (plus the reconciler's beat) together; Ctrl-C stops all.
set -euo pipefail
PY=${PY:-.venv/bin/python}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
pids=()
stop() { trap - INT TERM EXIT; kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; echo "stopped"; }
trap stop INT TERM EXIT
"$PY" -m celery -A workers.celery_app worker -Q gpu,default --concurrency 1 --pool solo -B \
  --loglevel INFO -n "gpu@%h" &
pids+=($!)
"$PY" manage.py runserver "$HOST:$PORT" --noreload &
pids+=($!)
echo
echo "  RIS annotate is serving at http://$HOST:$PORT/  (API schema: /api/schema/, admin: /admin/)"
echo "  Press Ctrl-C to stop the web server and the worker."
echo
wait -n "${pids[@]}"
