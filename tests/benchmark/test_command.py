"""``manage.py benchmark`` and ``make_synthetic_refcoco`` with the colour-oracle engine, the database and the pages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from server.benchmarks.models import BenchmarkPipelineResult, BenchmarkRun, BenchmarkSentenceResult
from tests.benchmark.conftest import run_benchmark
from tests.benchmark.oracle import ColourOracleEngine
from workers.engine.data.benchmark.results import ResultsFile

pytestmark = pytest.mark.django_db


def test_single_process_run_writes_outputs_and_database(
    synthetic_root: Path, tmp_path: Path, use_oracle
) -> None:
    out = tmp_path / "run"
    run_benchmark(synthetic_root, out, "--pipeline", "oracle_b", "--config", "oracle_b.tolerance=40")
    for name in ("summary.md", "summary.json", "figure.png", "results.jsonl", "run.json"):
        assert (out / name).is_file(), name
    lines = (out / "results.jsonl").read_text().splitlines()
    document = json.loads((out / "summary.json").read_text())
    n = document["pipelines"]["oracle"]["n"]
    assert len(lines) == 2 * n
    assert document["run"]["resolved_configs"]["oracle_b"] == {"tolerance": 40}
    run = BenchmarkRun.objects.get()
    assert run.state == "succeeded" and run.n_sentences == n and bytes(run.figure_png)[:4] == b"\x89PNG"
    oracle = BenchmarkPipelineResult.objects.get(run=run, pipeline="oracle")
    assert oracle.oiou == pytest.approx(document["pipelines"]["oracle"]["oiou"]) and oracle.oiou > 90
    assert oracle.model_calls_per_sentence["oracle_text_model"] == pytest.approx(1.0)
    assert BenchmarkSentenceResult.objects.filter(run=run).count() == 2 * n
    assert json.loads((out / "run.json").read_text())["db_run_id"] == run.pk


def test_limit_takes_the_first_sentences(synthetic_root: Path, tmp_path: Path, use_oracle) -> None:
    run_benchmark(synthetic_root, tmp_path / "run", "--limit", "4")
    assert len((tmp_path / "run" / "results.jsonl").read_text().splitlines()) == 4
    assert BenchmarkRun.objects.get().n_sentences == 4


def test_ctrl_c_then_resume_gives_the_full_run(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class InterruptedEngine(ColourOracleEngine):
        def predict(self, image, expressions, **kwargs):  # type: ignore[override]
            if len(self.calls) == 1:
                raise KeyboardInterrupt
            return super().predict(image, expressions, **kwargs)

    monkeypatch.setattr(
        "workers.cli.management.commands.benchmark.build_engine", lambda device: InterruptedEngine()
    )
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        run_benchmark(synthetic_root, out)
    assert stopped.value.code == 130
    run = BenchmarkRun.objects.get()
    assert run.state == "interrupted" and "--resume" in run.error
    partial = (out / "results.jsonl").read_bytes()
    assert partial.endswith(b"\n") and all(json.loads(line) for line in partial.splitlines())
    first_image = {json.loads(line)["image_id"] for line in partial.splitlines()}
    assert len(first_image) == 1

    with pytest.raises(CommandError, match="already holds a benchmark run; pass --resume"):
        run_benchmark(synthetic_root, out)
    with pytest.raises(CommandError, match="differs in limit"):
        run_benchmark(synthetic_root, out, "--resume", "--limit", "3")

    resumed: list[ColourOracleEngine] = []
    monkeypatch.setattr(
        "workers.cli.management.commands.benchmark.build_engine",
        lambda device: resumed.append(ColourOracleEngine()) or resumed[-1],
    )
    run_benchmark(synthetic_root, out, "--resume")
    run.refresh_from_db()
    assert run.state == "succeeded" and BenchmarkRun.objects.count() == 1
    assert len(resumed[0].calls) == run.n_images - 1  # the image finished before Ctrl-C is not asked again
    records = ResultsFile(out / "results.jsonl").read()
    assert len({r.sent_id for r in records}) == len(records) == run.n_sentences

    fresh = tmp_path / "fresh"
    monkeypatch.setattr(
        "workers.cli.management.commands.benchmark.build_engine", lambda device: ColourOracleEngine()
    )
    run_benchmark(synthetic_root, fresh)
    straight = {r.sent_id: r.iou for r in ResultsFile(fresh / "results.jsonl").read()}
    assert {r.sent_id: r.iou for r in records} == straight


def test_missing_image_stops_and_skip_missing_lists_it(
    synthetic_root: Path, tmp_path: Path, use_oracle
) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    victim = root / "images" / "train2014" / "COCO_train2014_000000001001.jpg"
    victim.unlink()
    with pytest.raises(CommandError, match=f"image 1001 is missing from the image folder: {victim}"):
        run_benchmark(root, tmp_path / "a")
    assert BenchmarkRun.objects.get().state == "failed"
    run_benchmark(root, tmp_path / "b", "--skip-missing")
    run = BenchmarkRun.objects.get(state="succeeded")
    assert [m["image_id"] for m in run.missing_images] == [1001]
    assert str(victim) in (tmp_path / "b" / "summary.md").read_text()
    result = BenchmarkPipelineResult.objects.get(run=run)
    assert result.missing_image == len(run.missing_images[0]["sent_ids"]) > 0


def test_bad_arguments_are_clear(synthetic_root: Path, tmp_path: Path, use_oracle) -> None:
    with pytest.raises(CommandError, match="has no split 'test'; its splits are: train, val, testA, testB"):
        call_command(
            "benchmark",
            "--dataset",
            "refcoco",
            "--split",
            "test",
            "--pipeline",
            "oracle",
            "--data-root",
            str(synthetic_root),
            "--out",
            str(tmp_path / "x"),
        )
    with pytest.raises(CommandError, match="unknown pipeline"):
        run_benchmark(synthetic_root, tmp_path / "y", "--pipeline", "nope")
    with pytest.raises(CommandError, match="pipeline.key=value"):
        run_benchmark(synthetic_root, tmp_path / "z", "--config", "tolerance=3")
    with pytest.raises(CommandError, match=r"refs file not found: .*refs\(unc\)\.p"):
        run_benchmark(tmp_path, tmp_path / "w")


def test_make_synthetic_refcoco_command(tmp_path: Path) -> None:
    call_command("make_synthetic_refcoco", "--out", str(tmp_path / "syn"), "--images", "2", "--seed", "3")
    assert (tmp_path / "syn" / "refcoco" / "refs(unc).p").read_bytes()[:2] == b"\x80\x02"
    assert len(list((tmp_path / "syn" / "images" / "train2014").glob("COCO_train2014_*.jpg"))) == 2
    with pytest.raises(CommandError, match="at least 1"):
        call_command("make_synthetic_refcoco", "--out", str(tmp_path / "none"), "--images", "0")


def test_pages_need_sign_in_and_show_the_run(
    synthetic_root: Path, tmp_path: Path, use_oracle, client, user
) -> None:
    run_benchmark(synthetic_root, tmp_path / "run", "--pipeline", "oracle_b")
    run = BenchmarkRun.objects.get()
    for url in ("/benchmarks/", f"/benchmarks/{run.pk}/", f"/benchmarks/{run.pk}/figure.png"):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], url
    client.force_login(user)
    listing = client.get("/benchmarks/").content.decode()
    assert f"/benchmarks/{run.pk}/" in listing and "oracle_b" in listing
    result = BenchmarkPipelineResult.objects.get(run=run, pipeline="oracle")
    detail = client.get(f"/benchmarks/{run.pk}/").content.decode()
    assert f"{result.oiou:.2f}" in detail and f"{result.miou:.2f}" in detail and "Lowest IoU" in detail
    figure = client.get(f"/benchmarks/{run.pk}/figure.png")
    assert figure.status_code == 200 and figure["Content-Type"] == "image/png"
    assert client.get("/benchmarks/999999/").status_code == 404


def test_check_reports_every_problem_in_one_run(synthetic_root: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    call_command("benchmark", "--check", "--dataset", "refcoco", "--data-root", str(root), "--no-progress")
    assert "refcoco: no problems" in capsys.readouterr().out
    instances = root / "refcoco" / "instances.json"
    data = json.loads(instances.read_text())
    data["annotations"][0]["segmentation"] = [[0, 0, float("nan"), 0, 5, 5]]
    data["annotations"][1]["segmentation"] = [1.0, 1.0, 2.0]
    instances.write_text(json.dumps(data))
    (root / "images" / "train2014" / data["images"][0]["file_name"]).write_bytes(b"not an image")
    with pytest.raises(CommandError, match=r"3 problem\(s\) in refcoco"):
        call_command(
            "benchmark", "--check", "--dataset", "refcoco", "--data-root", str(root), "--no-progress"
        )
    out = capsys.readouterr().out
    assert f"annotation {data['annotations'][0]['id']}: polygon part 0 holds nan" in out
    assert f"annotation {data['annotations'][1]['id']}: polygon part 0 has 3 values" in out
    assert "cannot decode image" in out


def test_a_run_needs_split_and_pipeline_unless_checking(synthetic_root: Path) -> None:
    with pytest.raises(CommandError, match="--split and --pipeline required"):
        call_command("benchmark", "--dataset", "refcoco", "--data-root", str(synthetic_root))
