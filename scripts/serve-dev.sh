#!/usr/bin/env bash
# Serve the web app and the Celery workers of both lanes (plus the reconciler's beat); Ctrl-C stops all.
set -euo pipefail
PY=${PY:-.venv/bin/python}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
pids=()
stop() {
  trap - INT TERM EXIT
  kill -TERM "${pids[@]}" 2>/dev/null || true
  # A job in flight is not lost when the worker is cut short: its message is acknowledged late and
  # the database still holds the job as running, so it is delivered again (or re-enqueued) later.
  for _ in 1 2 3 4 5; do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 1; done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "stopped the web server and the workers"
}
trap 'stop; exit 0' INT TERM
trap stop EXIT
export RIS_WORKER_READY_FILE="${RIS_VAR_DIR:-var}/.worker-ready"
rm -f "$RIS_WORKER_READY_FILE"
# One worker process per lane (workers/lanes.py), so a click or a typed expression never waits behind
# background work (preparing uploads, bulk rows, benchmark shards): the interactive one also serves the
# light default queue (the reconciler, milliseconds) and runs the beat. Each process loads its own models.
# The background process lowers its own CPU priority as it starts (os.nice(RIS_BACKGROUND_NICE), default 10,
# because it consumes only the background queue) and pauses its work between units while interactive work
# runs (RIS_BACKGROUND_YIELD): a click on two cores shares them with at most one background unit.
# Running as root (a container) makes Celery warn about privileges on every start; nothing to act on here.
VAR=${RIS_VAR_DIR:-var}
mkdir -p "$VAR"
export PYTHONWARNINGS="ignore:You're running the worker with superuser privileges${PYTHONWARNINGS:+,$PYTHONWARNINGS}"
"$PY" -m celery -A workers.celery_app worker -Q interactive,default --concurrency 1 --pool solo \
  --prefetch-multiplier 1 -B -s "$VAR/celerybeat-schedule" --loglevel INFO -n "interactive@%h" &
pids+=($!)
# More interactive processes (RIS_INTERACTIVE_WORKERS, default 2): a click or a second expression is
# answered by a free one while another runs a typed expression's full grid (minutes on a CPU).
for n in $(seq 2 "${RIS_INTERACTIVE_WORKERS:-2}"); do
  "$PY" -m celery -A workers.celery_app worker -Q interactive --concurrency 1 --pool solo \
    --prefetch-multiplier 1 --loglevel INFO -n "interactive$n@%h" &
  pids+=($!)
done
"$PY" -m celery -A workers.celery_app worker -Q background --concurrency 1 --pool solo \
  --prefetch-multiplier 1 --loglevel INFO -n "background@%h" &
pids+=($!)
"$PY" manage.py runserver "$HOST:$PORT" --noreload &
pids+=($!)
# Print the address (and, on the first start, the admin's password) last, once server and worker are up.
probe=$HOST; [[ $probe == 0.0.0.0 || $probe == "::" ]] && probe=127.0.0.1
for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/$probe/$PORT") 2>/dev/null && break; sleep 0.5; done
for _ in $(seq 1 240); do [[ -e $RIS_WORKER_READY_FILE ]] && break; sleep 0.5; done
sleep 1
echo
echo "  RIS annotate is serving at http://$HOST:$PORT/  (API schema: /api/schema/, admin: /admin/)"
if [[ -n ${RIS_START_NOTE:-} && -s $RIS_START_NOTE ]]; then sed 's/^/  /' "$RIS_START_NOTE"; fi
rm -f "${RIS_START_NOTE:-/nonexistent}"
echo "  Press Ctrl-C to stop the web server and the workers (interactive and background lanes)."
echo
wait -n "${pids[@]}" || true
