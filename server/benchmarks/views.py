"""Benchmark pages: the list of runs and one run's table, figure and weakest sentences (sign-in required)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from server.benchmarks import selectors, services
from server.benchmarks.models import BenchmarkRun


def _get_run(run_id: int) -> BenchmarkRun:
    try:
        return selectors.run_get(run_id=run_id)
    except BenchmarkRun.DoesNotExist as exc:
        raise Http404(f"no benchmark run {run_id}") from exc


@login_required
def run_list_page(request: HttpRequest) -> HttpResponse:
    services.runs_reconcile()  # a run whose process died shows as interrupted, never as running
    return render(request, "benchmarks/run_list.html", {"runs": selectors.run_list()[:200]})


@login_required
def run_detail_page(request: HttpRequest, run_id: int) -> HttpResponse:
    services.runs_reconcile()
    run = _get_run(run_id)
    results = list(run.pipeline_results.order_by("pipeline"))
    worst = {
        r.pipeline: list(selectors.sentence_results_worst(run=run, pipeline=r.pipeline, n=15))
        for r in results
    }
    context = {
        "run": run,
        "results": results,
        "worst": worst,
        "shards": selectors.shard_states(run=run) if run.distributed else None,
        "n_done": selectors.sentence_results_count(run=run),
    }
    return render(request, "benchmarks/run_detail.html", context)


@login_required
def run_figure(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _get_run(run_id)
    if not run.figure_png:
        raise Http404(f"benchmark run {run_id} has no figure yet")
    return HttpResponse(bytes(run.figure_png), content_type="image/png")
