"""``manage.py benchmark --pipeline refdiff`` on the synthetic REFER set, in both proposal modes.

Tiny random models (wiring only): the run must score every sentence, write its report and store the run;
the proposal-free run must never load a SAM model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command

from workers.engine.store.manifest import ModelStore
from workers.engine.store.tiny.writers import write_tiny

# Small SD input (64 px) and one UNet step; the random tiny SAM with its filters off proposes masks fast.
COMMON = [
    "refdiff.noising.image_size=64",
    "refdiff.noising.steps=10",
    "refdiff.noising.strength=0.1",
    'refdiff.hard_crop="square"',
]
MODES = {
    "attention": ['refdiff.proposal_source="attention"'],
    "sam": [
        'refdiff.proposal_source="sam_tiny"',
        "refdiff.min_area=0",
        'refdiff.amg={"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}',
    ],
}


@pytest.fixture(scope="module")
def refdiff_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("refdiff-models")
    store = ModelStore(root)
    for name in ("sd_tiny", "clip_tiny", "sam_tiny"):
        write_tiny(store, name)
    return root


@pytest.mark.django_db
@pytest.mark.parametrize("mode", sorted(MODES))
def test_benchmark_runs_refdiff_on_the_synthetic_set(
    mode: str,
    synthetic_root: Path,
    refdiff_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    engine_settings,
) -> None:
    from server.benchmarks.models import BenchmarkRun
    from workers.cli.management.commands import benchmark as command

    engine_settings(model_dir=refdiff_model_dir, cache_dir=tmp_path / "cache", profile="tiny", device="cpu")
    engines = []
    build = command.build_engine

    def keep_engine(device: str | None):
        engine = build(device)
        engines.append(engine)
        return engine

    monkeypatch.setattr(command, "build_engine", keep_engine)
    out = tmp_path / "run"
    args = [
        "--dataset",
        "refcoco",
        "--split",
        "val",
        "--pipeline",
        "refdiff",
        "--data-root",
        str(synthetic_root),
    ]
    args += ["--limit", "3", "--device", "cpu", "--out", str(out), "--no-progress"]
    for item in COMMON + MODES[mode]:
        args += ["--config", item]
    call_command("benchmark", *args)

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 3 and {r["pipeline"] for r in rows} == {"refdiff"}
    assert all(0.0 <= r["iou"] <= 1.0 for r in rows)
    assert all(r["n_candidates"] > 0 and not r["no_proposal"] for r in rows)
    assert (out / "summary.json").is_file() and (out / "summary.md").is_file()
    run = BenchmarkRun.objects.get()
    assert run.state == BenchmarkRun.State.SUCCEEDED
    hub = engines[0].hub
    sam_loads = sum(hub.load_counts[name] for name in ("mobile_sam", "sam_tiny", "sam_vit_h"))
    assert sam_loads == (0 if mode == "attention" else 1)
    assert hub.load_counts["sd_tiny"] == 1
