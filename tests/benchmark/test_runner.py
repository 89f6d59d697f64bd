"""The benchmark loop with a deterministic colour-oracle engine: scoring, grouping, costs, results file."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from tests.benchmark.oracle import ColourOracleEngine, colour_mask
from workers.engine.core.types import Candidate
from workers.engine.data.benchmark.report import parse_config_overrides, summarize_results, write_report
from workers.engine.data.benchmark.results import ResultsFile, ResultsFileError, SentenceResult, hold_sigint
from workers.engine.data.benchmark.runner import run_groups
from workers.engine.data.metrics import summarize
from workers.engine.data.refer import MissingImageError, ReferDataset
from workers.engine.runtime import Prediction


class NoProposalEngine(ColourOracleEngine):
    def predict(self, image, expressions, *, pipeline, config=None, top_k=None):  # type: ignore[override]
        self.calls.append((image.sha256, len(expressions), pipeline))
        return Prediction(
            [[] for _ in expressions], pipeline, self.resolve_config(pipeline, config), "oracle"
        )


def _run(ds: ReferDataset, engine, pipelines=("oracle",), **kwargs) -> list[SentenceResult]:
    out: list[SentenceResult] = []
    run_groups(ds, ds.images(), engine, list(pipelines), on_results=out.extend, **kwargs)
    return out


def test_oracle_scores_match_a_direct_computation(
    synthetic_root: Path, oracle_engine: ColourOracleEngine
) -> None:
    ds = ReferDataset(synthetic_root, "refcoco", "val")
    results = _run(ds, oracle_engine)
    assert [r.sent_id for r in results] == [s.sent_id for s in ds.iter_sentences()]
    for group in ds.images():
        rgb, _ = ds.load_image(group)
        for s in group.sentences:
            r = next(x for x in results if x.sent_id == s.sent_id)
            pred = colour_mask(rgb, s.text.split()[0] if s.text.split()[0] != "the" else s.text.split()[1])
            gt = ds.gt_mask(s.ann_id)
            assert (r.intersection, r.union) == (int((pred & gt).sum()), int((pred | gt).sum()))
            assert r.gt_area == int(gt.sum()) and r.pred_area == int(pred.sum())
    # shapes other than the cross are found almost exactly
    assert np.median([r.iou for r in results]) > 0.95
    assert summarize_results(results, ["oracle"])["oracle"]["oiou"] == pytest.approx(
        summarize([(r.intersection, r.union) for r in results])["oiou"]
    )


def test_one_predict_call_per_image_and_pipeline_with_all_its_sentences(
    synthetic_root: Path, oracle_engine: ColourOracleEngine
) -> None:
    ds = ReferDataset(synthetic_root, "refcoco", "val")
    results = _run(ds, oracle_engine, pipelines=("oracle", "oracle_b"))
    groups = ds.images()
    assert [(n, p) for _, n, p in oracle_engine.calls] == [
        (len(g.sentences), p) for g in groups for p in ("oracle", "oracle_b")
    ]
    assert len(results) == 2 * ds.n_sentences
    # costs are each sentence's share of its image's call: one image-model call per image, one text call each
    for r in results:
        n = next(len(g.sentences) for g in groups if g.image_id == r.image_id)
        assert r.model_calls["oracle_image_model"] == pytest.approx(1 / n)
        assert r.model_calls["oracle_text_model"] == pytest.approx(1.0)
        assert r.seconds == pytest.approx(r.image_seconds / n)
    summary = summarize_results(results, ["oracle", "oracle_b"])["oracle"]
    assert summary["model_calls_per_sentence"]["oracle_text_model"] == pytest.approx(1.0)
    assert summary["model_calls_per_sentence"]["oracle_image_model"] == pytest.approx(
        len(groups) / ds.n_sentences
    )
    assert summary["images"] == len(groups)


def test_no_proposal_counts_every_sentence_with_iou_zero(synthetic_root: Path) -> None:
    ds = ReferDataset(synthetic_root, "refcocog", "val", split_by="umd")
    results = _run(ds, NoProposalEngine())
    assert len(results) == ds.n_sentences
    assert all(
        r.no_proposal and r.iou == 0 and r.intersection == 0 and r.union == r.gt_area > 0 for r in results
    )
    summary = summarize_results(results, ["oracle"])["oracle"]
    assert (summary["n"], summary["no_proposal"], summary["oiou"], summary["miou"]) == (
        ds.n_sentences,
        ds.n_sentences,
        0.0,
        0.0,
    )


def test_gt_union_changes_only_the_cross(synthetic_root: Path) -> None:
    conventional, union = [], []
    for split in ("train", "val", "testA", "testB"):
        conventional += _run(ReferDataset(synthetic_root, "refcoco", split), ColourOracleEngine())
        union += _run(ReferDataset(synthetic_root, "refcoco", split, gt_union=True), ColourOracleEngine())
    instances = json.loads((synthetic_root / "refcoco" / "instances.json").read_text())
    crosses = {a["id"] for a in instances["annotations"] if a["category_id"] == 5}
    changed = {a.ann_id for a, b in zip(conventional, union, strict=True) if a.iou != b.iou}
    assert changed and changed <= crosses
    for a, b in zip(conventional, union, strict=True):
        if a.ann_id in crosses:
            assert b.iou > a.iou  # the oracle paints the overlap, which only the union counts


def test_missing_image_stops_or_is_skipped_and_listed(synthetic_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    ds = ReferDataset(root, "refcoco", "val")
    victim = ds.images()[1]
    ds.image_path(victim).unlink()
    with pytest.raises(MissingImageError, match=str(ds.image_path(victim))):
        _run(ds, ColourOracleEngine())
    out: list[SentenceResult] = []
    outcome = run_groups(
        ds, ds.images(), ColourOracleEngine(), ["oracle"], skip_missing=True, on_results=out.extend
    )
    assert len(out) == ds.n_sentences and outcome.sentences_done == ds.n_sentences
    assert [m.image_id for m in outcome.missing_images] == [victim.image_id]
    assert set(outcome.missing_images[0].sent_ids) == {s.sent_id for s in victim.sentences}
    skipped = [r for r in out if r.image_id == victim.image_id]
    assert skipped and all(r.missing_image and r.iou == 0 and r.union == r.gt_area for r in skipped)
    assert not any(r.missing_image for r in out if r.image_id != victim.image_id)


def test_resume_skips_done_sentences(synthetic_root: Path, tmp_path: Path) -> None:
    ds = ReferDataset(synthetic_root, "refcoco", "val")
    results_file = ResultsFile(tmp_path / "results.jsonl")
    engine = ColourOracleEngine()

    def stop_after_first_image(results: list[SentenceResult]) -> None:
        results_file.append(results)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_groups(ds, ds.images(), engine, ["oracle"], on_results=stop_after_first_image)
    first = results_file.read()
    assert {r.image_id for r in first} == {ds.images()[0].image_id}
    done = {"oracle": {r.sent_id for r in first}}
    engine2 = ColourOracleEngine()
    run_groups(ds, ds.images(), engine2, ["oracle"], done=done, on_results=results_file.append)
    assert len(engine2.calls) == len(ds.images()) - 1  # the finished image is not asked again
    everything = results_file.read()
    assert sorted(r.sent_id for r in everything) == sorted(s.sent_id for s in ds.iter_sentences())
    straight = _run(ds, ColourOracleEngine())
    assert {r.sent_id: r.iou for r in everything} == {r.sent_id: r.iou for r in straight}


def test_results_file_drops_a_partial_last_line_and_rejects_garbage(tmp_path: Path) -> None:
    record = SentenceResult(
        "p", 1, 2, 3, 4, "red disc", 5, 10, 0.5, 6, 9, 1, 0.3, False, False, 0.1, 0.2, {"m": 1.0}
    )
    path = tmp_path / "r.jsonl"
    results = ResultsFile(path)
    results.append([record, record])
    with path.open("ab") as fh:
        fh.write(b'{"pipeline": "p", "sent_')  # a killed process
    assert results.read() == [record, record]
    assert path.read_bytes().endswith(b"\n") and len(path.read_bytes().splitlines()) == 2  # repaired
    path.write_text('{"pipeline": "p"}\nnot json\n')
    with pytest.raises(ResultsFileError, match="line 1"):
        results.read()


def test_ctrl_c_during_an_append_waits_for_the_whole_write(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with pytest.raises(KeyboardInterrupt), hold_sigint():
        os.kill(os.getpid(), signal.SIGINT)
        path.write_text("whole line\n")  # still runs: the interrupt waits for the block's end
    assert path.read_text() == "whole line\n"


def test_report_files(synthetic_root: Path, tmp_path: Path) -> None:
    ds = ReferDataset(synthetic_root, "refcoco", "val")
    results = _run(ds, ColourOracleEngine(), pipelines=("oracle", "oracle_b"))
    summary = summarize_results(results, ["oracle", "oracle_b"])
    missing = [{"image_id": 5, "path": "/x/COCO_train2014_000000000005.jpg", "sent_ids": [1, 2]}]
    paths = write_report(tmp_path, {**ds.describe(), "limit": None, "configs": {}}, summary, missing)
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    document = json.loads(paths["json"].read_text())
    assert document["pipelines"]["oracle"]["n"] == ds.n_sentences
    assert document["missing_images"] == missing
    markdown = paths["markdown"].read_text()
    assert "| pipeline | sentences | images | oIoU | mIoU | P@0.5 |" in markdown
    assert f"| oracle | {ds.n_sentences} |" in markdown and "COCO_train2014_000000000005.jpg" in markdown


def test_config_overrides_parse_to_nested_values() -> None:
    parsed = parse_config_overrides(
        [
            "global_local.v=0.85",
            "global_local.amg.points_per_side=4",
            "global_local.clip_model=clip_tiny",
            "tas.rectifier=false",
        ],
        ["global_local", "tas"],
    )
    assert parsed == {
        "global_local": {"v": 0.85, "amg": {"points_per_side": 4}, "clip_model": "clip_tiny"},
        "tas": {"rectifier": False},
    }
    with pytest.raises(ValueError, match="pipeline.key=value"):
        parse_config_overrides(["v=0.85"], ["global_local"])
    with pytest.raises(ValueError, match="not among --pipeline"):
        parse_config_overrides(["lgd.alpha=1"], ["global_local"])


class ShuffledOracleEngine(ColourOracleEngine):
    """Puts a wrong (empty-of-target) mask first and the oracle's right one second: Hit@1 = 0, Hit@3 = hit."""

    def predict(self, image, expressions, *, pipeline, config=None, top_k=None):  # type: ignore[override]
        right = super().predict(image, expressions, pipeline=pipeline, config=config, top_k=top_k)
        answers = []
        for ranked in right.candidates:
            if not ranked:
                answers.append([])
                continue
            h, w = image.rgb.shape[:2]
            wrong = np.zeros((h, w), dtype=np.uint8)
            wrong[0, 0] = 1  # one pixel in a corner: IoU ~ 0 with any target
            from pycocotools import mask as mask_utils

            rle = mask_utils.encode(np.asfortranarray(wrong))
            rle = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            first = Candidate(0, rle, (0.0, 0.0, 1.0, 1.0), 1, 2.0, {})
            answers.append([first, *ranked])
        return Prediction(answers, pipeline, right.config, "oracle")


def test_ranking_metrics_see_the_right_mask_at_rank_two(synthetic_root: Path, tmp_path: Path) -> None:
    ds = ReferDataset(synthetic_root, "refcoco", "val")
    right = _run(ds, ColourOracleEngine())
    shuffled = _run(ds, ShuffledOracleEngine())
    for r, s in zip(right, shuffled, strict=True):
        assert len(s.ranked_ious) == r.n_candidates + 1
        if r.n_candidates:
            assert s.ranked_ious[1] == pytest.approx(r.iou)
            assert s.ceiling_iou == pytest.approx(max(r.iou, s.ranked_ious[0]))
    hits = 100.0 * sum(1 for r in right if r.iou > 0.5) / len(right)
    summary = summarize_results(shuffled, ["oracle"])["oracle"]
    assert summary["hit@1"] == pytest.approx(summary["prec@0.5"])
    assert summary["hit@1"] < hits  # the corner pixel is first
    assert summary["hit@3"] == pytest.approx(hits) and summary["hit@10"] == pytest.approx(hits)
    assert summary["ceiling_hit"] == pytest.approx(hits)
    assert summary["oracle_iou@3"] == pytest.approx(100 * np.mean([r.iou for r in right]))
    paths = write_report(tmp_path, {**ds.describe(), "limit": None, "configs": {}}, {"oracle": summary})
    markdown = paths["markdown"].read_text()
    assert "| pipeline | Hit@1 | Hit@3 | Hit@5 | Hit@10 | oracle IoU@1 |" in markdown
    assert f"| oracle | {summary['hit@1']:.2f} | {summary['hit@3']:.2f} |" in markdown
    document = json.loads(paths["json"].read_text())
    assert document["pipelines"]["oracle"]["hit@3"] == pytest.approx(hits)
    assert "ceiling_iou" in document["pipelines"]["oracle"]
