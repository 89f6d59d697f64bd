"""``manage.py benchmark --pipeline lgd`` on the synthetic REFER set, with the tiny store models.

A store holding just what this run needs (``sam_tiny``, ``clip_tiny``, ``mllm_tiny``) is written once per
module; the engine is built from ``RIS_*`` environment variables as in production.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command

from workers.engine.store.manifest import ModelStore
from workers.engine.store.tiny.writers import make_tiny


@pytest.fixture(scope="module")
def lgd_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lgd-store")
    make_tiny(ModelStore(root), ["sam_tiny", "clip_tiny", "mllm_tiny"])
    return root


@pytest.mark.django_db
def test_benchmark_runs_the_lgd_pipeline_on_the_synthetic_set(
    synthetic_root: Path, lgd_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine_settings
) -> None:
    from server.benchmarks.models import BenchmarkRun

    engine_settings(model_dir=lgd_store, cache_dir=tmp_path / "cache", profile="tiny", device="cpu")
    out = tmp_path / "run"
    call_command(
        "benchmark",
        "--dataset",
        "refcoco",
        "--split",
        "val",
        "--pipeline",
        "lgd",
        "--data-root",
        str(synthetic_root),
        "--out",
        str(out),
        "--limit",
        "2",
        "--no-progress",
        "--config",
        "lgd.proposal_source=sam_tiny",
        "--config",
        "lgd.amg.points_per_side=2",
        "--config",
        "lgd.amg.pred_iou_thresh=0.0",
        "--config",
        "lgd.amg.stability_score_thresh=0.0",
        "--config",
        "lgd.generation.max_new_tokens=3",
    )

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    assert rows and all(r["pipeline"] == "lgd" for r in rows)
    assert len({r["sent_id"] for r in rows}) == len(rows)
    assert all(0.0 <= r["iou"] <= 1.0 for r in rows)
    assert all(r["n_candidates"] >= 1 for r in rows)  # sam_tiny proposes masks on every image
    # The MLLM ran and its calls are charged to the sentences (one generate call per image, shared).
    mllm_calls = sum(r["model_calls"].get("mllm_tiny", 0.0) for r in rows)
    n_images = len({r["image_id"] for r in rows})
    assert mllm_calls == pytest.approx(n_images)

    summary = json.loads((out / "summary.json").read_text())
    assert "lgd" in json.dumps(summary)
    run = BenchmarkRun.objects.get()
    assert run.state == BenchmarkRun.State.SUCCEEDED
