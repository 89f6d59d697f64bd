"""A benchmark run that dies is never left "running" (issue 15): its page says interrupted, with the reason,
and ``--resume`` continues it. A bad annotation stops the run naming it, and nothing native crashes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError
from django.utils import timezone

from server.benchmarks import services
from server.benchmarks.models import BenchmarkRun
from tests.benchmark.conftest import run_benchmark
from tests.benchmark.oracle import ColourOracleEngine
from workers.engine.data.refer import ReferDataset
from workers.tasks.reconcile import reconcile_jobs

pytestmark = pytest.mark.django_db

SPEC = {"dataset": "refcoco", "split_by": "unc", "split": "val", "pipelines": ["oracle"]}


@pytest.fixture
def signed_in(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_run_whose_process_died_is_shown_interrupted_with_the_reason(signed_in) -> None:
    run = services.run_create(spec=SPEC, distributed=False, out_dir="/tmp/run-out")
    services.run_attach(run=run, pid=_dead_pid())
    page = signed_in.get("/benchmarks/").content.decode()
    run.refresh_from_db()
    assert run.state == "interrupted" and run.finished_at is not None
    assert f"pid {run.pid}" in run.error and "ended without finishing" in run.error
    assert "--out /tmp/run-out --resume" in run.error
    assert "interrupted" in page and "ended without finishing" in page
    detail = signed_in.get(f"/benchmarks/{run.pk}/").content.decode()
    assert "ended without finishing" in detail


def test_a_silent_run_on_another_host_is_interrupted_by_the_reconciler(settings) -> None:
    settings.RIS_BENCHMARK_STALE_SECONDS = 60
    run = services.run_create(spec=SPEC, distributed=True)
    services.run_attach(run=run, pid=os.getpid(), host="gpu-box-7")
    BenchmarkRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=300))
    report = reconcile_jobs()
    assert report["benchmark_runs"]["interrupted"] == [run.pk]
    run.refresh_from_db()
    assert run.state == "interrupted" and "no sign of life" in run.error and "gpu-box-7" in run.error


def test_a_live_run_stays_running() -> None:
    run = services.run_create(spec=SPEC, distributed=False)
    services.run_attach(run=run)  # this process, beating now
    assert services.runs_reconcile() == []
    run.refresh_from_db()
    assert run.state == "running"


def test_sigterm_marks_the_run_interrupted_and_resume_finishes_it(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class TerminatedEngine(ColourOracleEngine):
        def predict(self, image, expressions, **kwargs):  # type: ignore[override]
            if len(self.calls) == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled by the command
            return super().predict(image, expressions, **kwargs)

    monkeypatch.setattr(
        "workers.cli.management.commands.benchmark.build_engine", lambda d: TerminatedEngine()
    )
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        run_benchmark(synthetic_root, out)
    run = BenchmarkRun.objects.get()
    assert run.state == "interrupted" and "SIGTERM" in run.error
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back
    monkeypatch.setattr(
        "workers.cli.management.commands.benchmark.build_engine", lambda d: ColourOracleEngine()
    )
    run_benchmark(synthetic_root, out, "--resume")
    run.refresh_from_db()
    assert run.state == "succeeded" and run.error == ""


def test_a_bad_annotation_fails_the_run_naming_it_then_resume_continues(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    last = ReferDataset(root, "refcoco", "val").images()[-1]
    victim = last.sentences[0].ann_id
    instances = root / "refcoco" / "instances.json"
    good = instances.read_text()
    data = json.loads(good)
    next(a for a in data["annotations"] if a["id"] == victim)["segmentation"] = [[0, 0, 2e8, 0, 2e8, 2e8]]
    instances.write_text(json.dumps(data))
    monkeypatch.setattr(
        "workers.cli.management.commands.benchmark.build_engine", lambda d: ColourOracleEngine()
    )
    out = tmp_path / "run"
    with pytest.raises(CommandError, match=f"annotation {victim}: polygon part 0 reaches x"):
        run_benchmark(root, out)
    run = BenchmarkRun.objects.get()
    assert run.state == "failed" and f"annotation {victim}" in run.error and "instances.json" in run.error
    assert (out / "results.jsonl").read_text().strip()  # the images before it are kept
    instances.write_text(good)
    run_benchmark(root, out, "--resume")
    run.refresh_from_db()
    assert run.state == "succeeded"
