"""``grounded_sam3`` and ``ensemble`` end to end with the tiny store models: through ``manage.py benchmark`` on the
synthetic REFER set and through the segmentation task (in-process, the real engine, as a worker runs it).

A store holding just what the runs need (``sam_tiny``, ``clip_tiny``, ``qwen_vl_tiny``, ``sam3_tiny``) is written
once per module; the engine is built from the Django settings as in production. Tiny models prove wiring,
never quality: the assertions are on shapes, counts and bookkeeping.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command

from workers.engine.store.manifest import ModelStore
from workers.engine.store.tiny.writers import make_tiny

AMG = ["amg.points_per_side=2", "amg.pred_iou_thresh=0.0", "amg.stability_score_thresh=0.0"]
FAST_AMG = {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
ENSEMBLE_MEMBERS = {
    "members": ["oracle", "global_local"],
    "member_configs": {"global_local": {"proposal_source": "sam_tiny", "amg": FAST_AMG}},
}


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grounding-store")
    make_tiny(ModelStore(root), ["sam_tiny", "clip_tiny", "qwen_vl_tiny", "sam3_tiny"])
    return root


def _benchmark(synthetic_root: Path, out: Path, pipeline: str, *configs: str) -> list[dict]:
    args = ["benchmark", "--dataset", "refcoco", "--split", "val", "--pipeline", pipeline]
    args += ["--data-root", str(synthetic_root), "--out", str(out), "--limit", "3", "--no-progress"]
    for item in configs:
        args += ["--config", f"{pipeline}.{item}"]
    call_command(*args)
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def _summary_has_ranking(out: Path, pipeline: str) -> dict:
    summary = json.loads((out / "summary.json").read_text())["pipelines"][pipeline]
    for key in ("hit@1", "hit@3", "hit@5", "hit@10", "oracle_iou@1", "oracle_iou@10", "ceiling_iou"):
        assert 0.0 <= summary[key] <= 100.0, key
    assert summary["hit@1"] == pytest.approx(summary["prec@0.5"])
    assert summary["oracle_iou@1"] <= summary["oracle_iou@10"] <= summary["ceiling_iou"] + 1e-9
    markdown = (out / "summary.md").read_text()
    assert "| pipeline | Hit@1 | Hit@3 | Hit@5 | Hit@10 |" in markdown and f"| {pipeline} |" in markdown
    assert (out / "figure.png").read_bytes()[:4] == b"\x89PNG"
    return summary


@pytest.mark.django_db
def test_benchmark_runs_grounded_sam3(
    synthetic_root: Path, tiny_store: Path, tmp_path: Path, engine_settings
) -> None:
    engine_settings(model_dir=tiny_store, cache_dir=tmp_path / "cache", profile="tiny", device="cpu")
    out = tmp_path / "run"
    rows = _benchmark(synthetic_root, out, "grounded_sam3", "fallback_source=sam_tiny", *AMG)
    assert rows and all(r["pipeline"] == "grounded_sam3" for r in rows)
    assert all(1 <= r["n_candidates"] <= 5 for r in rows)  # the tiny profile keeps at most 5 instances
    assert all(len(r["ranked_ious"]) == r["n_candidates"] for r in rows)
    assert all(r["ceiling_iou"] == pytest.approx(max(r["ranked_ious"])) for r in rows)
    calls = {m for r in rows for m in r["model_calls"]}
    assert {"sam3_tiny", "qwen_vl_tiny"} <= calls
    _summary_has_ranking(out, "grounded_sam3")


@pytest.mark.django_db
def test_benchmark_grounded_sam3_falls_back_to_whole_image_proposals(
    synthetic_root: Path, tiny_store: Path, tmp_path: Path, engine_settings
) -> None:
    engine_settings(model_dir=tiny_store, cache_dir=tmp_path / "cache", profile="tiny", device="cpu")
    out = tmp_path / "run"
    rows = _benchmark(
        synthetic_root, out, "grounded_sam3", "score_threshold=1.0", "fallback_source=sam_tiny", *AMG
    )
    assert rows and all(r["n_candidates"] >= 1 for r in rows)  # SAM 3 finds nothing; sam_tiny proposes
    assert all("sam_tiny" in r["model_calls"] for r in rows)


@pytest.mark.django_db
def test_benchmark_runs_the_ensemble(
    synthetic_root: Path, tiny_store: Path, tmp_path: Path, engine_settings, client, user
) -> None:
    from server.benchmarks.models import BenchmarkRun

    engine_settings(model_dir=tiny_store, cache_dir=tmp_path / "cache", profile="tiny", device="cpu")
    out = tmp_path / "run"
    rows = _benchmark(
        synthetic_root,
        out,
        "ensemble",
        f"members={json.dumps(ENSEMBLE_MEMBERS['members'])}",
        f"member_configs={json.dumps(ENSEMBLE_MEMBERS['member_configs'])}",
    )
    assert rows and all(r["pipeline"] == "ensemble" for r in rows)
    # the oracle's exact colour mask is among the fused candidates: the ceiling sees it
    assert max(r["ceiling_iou"] or 0.0 for r in rows) > 0.5
    summary = _summary_has_ranking(out, "ensemble")
    assert summary["ceiling_hit"] > 0.0
    # the run stored in the database shows the ranking table on its page
    run = BenchmarkRun.objects.get()
    stored = run.pipeline_results.get(pipeline="ensemble")
    assert stored.ranking["hit@10"] == pytest.approx(summary["hit@10"])
    assert run.sentence_results.filter(ceiling_iou__isnull=False).count() == len(rows)
    client.force_login(user)
    page = client.get(f"/benchmarks/{run.pk}/").content.decode()
    assert "<th>Hit@1</th>" in page and f"{summary['ceiling_iou']:.2f}" in page


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("pipeline", "config"),
    [
        ("grounded_sam3", {"fallback_source": "sam_tiny", "amg": FAST_AMG}),
        ("ensemble", ENSEMBLE_MEMBERS),
    ],
)
def test_a_job_runs_through_the_segmentation_task(
    pipeline: str, config: dict, tiny_store: Path, tmp_path: Path, engine_settings, project, user, monkeypatch
) -> None:
    from server.ris.services.expressions import expression_create
    from tests.server.factories import image_make
    from workers.engine.runtime import Engine
    from workers.tasks import engine_access
    from workers.tasks import segmentation as tasks

    settings = engine_settings(
        model_dir=tiny_store, cache_dir=tmp_path / "cache", profile="tiny", device="cpu"
    )
    engine = Engine(settings)
    monkeypatch.setattr(engine_access, "engine_get", lambda: engine)
    image = image_make(project, user, width=48, height=32)
    expression = expression_create(
        image=image, text="the red square", author=user, pipeline=pipeline, config=config
    )
    job = expression.jobs.get()
    assert tasks.run_segmentation_job.apply(args=[job.pk]).get() == "succeeded"
    job.refresh_from_db()
    assert job.state == "succeeded", job.error
    candidates = list(job.candidates.order_by("rank"))
    assert candidates and [c.rank for c in candidates] == list(range(len(candidates)))
    components = candidates[0].components
    if pipeline == "grounded_sam3":
        assert {"sam3_score", "llm_rank", "llm_chosen", "fallback"} <= set(components)
        assert job.config["sam3_model"] == "sam3_tiny" and job.config["mllm_model"] == "qwen_vl_tiny"
    else:
        assert {"rank_oracle", "rank_global_local", "score"} <= set(components)
        assert job.config["member_profile"] == "tiny"
