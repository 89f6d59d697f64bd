"""The periodic reconciler (``reconcile_jobs``, on the ``default`` queue, every ``RIS_RECONCILE_INTERVAL`` s).

One pass over every kind of work, by the shared rules of ``server.ris.services.work``: messages the
broker lost are sent again, work whose worker vanished is run again, and work whose workers died
``RIS_JOB_MAX_ATTEMPTS`` times is failed in words. Refine requests not answered within
``RIS_REFINE_STALE_SECONDS`` are also ended with a message, and benchmark runs whose command process is
gone are marked interrupted (``runs_reconcile``). The task keeps its historical name.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from workers.celery_app import app


@app.task(name="workers.tasks.reconcile_jobs", ignore_result=True)
def reconcile_jobs() -> dict[str, dict[str, list[int]]]:
    """Reconcile jobs, refine requests and benchmark shards; returns the ids handled per kind and action."""
    from server.benchmarks.services import runs_reconcile, shards_reconcile
    from server.ris.services import jobs_reconcile
    from server.web.services.refine import refine_requests_reconcile

    report: dict[str, Any] = {
        "jobs": asdict(jobs_reconcile()),
        "refine_requests": asdict(refine_requests_reconcile()),
        "shards": asdict(shards_reconcile()),
        "benchmark_runs": {"interrupted": runs_reconcile()},
    }
    return report
