"""The benchmark at scale: per-ref schedule, prefetching loader, post-processing thread, profile, estimate,
per-worker rates and the RefCOCO-shaped synthetic split (issue 20)."""

from __future__ import annotations

import json
import pickle
import threading
import time
from pathlib import Path

import pytest
from django.core.management import CommandError

from tests.benchmark.conftest import run_benchmark
from tests.benchmark.oracle import ColourOracleEngine
from workers.engine.data.benchmark.estimate import RunEstimator
from workers.engine.data.benchmark.loader import PrefetchingLoader
from workers.engine.data.benchmark.profile import PHASE_OF_STAGE, RunProfile
from workers.engine.data.benchmark.runner import ImageDone, run_groups
from workers.engine.data.refer import MissingImageError, ReferDataset
from workers.engine.data.synthetic import write_synthetic_refcoco


@pytest.fixture(scope="module")
def shaped_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("refcoco-shaped")
    write_synthetic_refcoco(root, 6, seed=3, refcoco_shaped=True, width=160, height=120)
    return root


def _dataset(root: Path) -> ReferDataset:
    return ReferDataset(root, "refcoco", "val", split_by="unc")


# -- the RefCOCO-shaped split ----------------------------------------------------------------------------
def test_refcoco_shaped_split_has_refcoco_proportions(tmp_path: Path) -> None:
    summary = write_synthetic_refcoco(tmp_path, 30, seed=0, refcoco_shaped=True)
    refs = pickle.loads((tmp_path / "refcoco" / "refs(unc).p").read_bytes(), encoding="latin-1")
    by_image: dict[int, list[dict]] = {}
    for ref in refs:
        by_image.setdefault(ref["image_id"], []).append(ref)
    assert len(by_image) == 30
    for image_refs in by_image.values():
        assert 2 <= len(image_refs) <= 3
        assert len({r["split"] for r in image_refs}) == 1  # an image's refs share a split, as in RefCOCO
        for ref in image_refs:
            assert 2 <= len(ref["sentences"]) <= 4
    refs_per_image = len(refs) / 30
    sentences_per_image = summary.n_sentences["refcoco/unc"] / 30
    assert 2.2 <= refs_per_image <= 2.8
    assert 5.5 <= sentences_per_image <= 8.5
    instances = json.loads((tmp_path / "refcoco" / "instances.json").read_text())
    assert {(i["width"], i["height"]) for i in instances["images"]} == {(640, 480)}


def test_default_synthetic_split_is_unchanged_by_the_new_option(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_synthetic_refcoco(a, 2, seed=0)
    write_synthetic_refcoco(b, 2, seed=0, refcoco_shaped=False, width=128, height=96)
    for rel in ("refcoco/refs(unc).p", "refcoco/instances.json", "refcocog/refs(umd).p"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    refs = pickle.loads((a / "refcoco" / "refs(unc).p").read_bytes(), encoding="latin-1")
    assert len({r["split"] for r in refs if r["image_id"] == 1000}) > 1  # spread over splits, as before


# -- schedules with the oracle engine ----------------------------------------------------------------------


def _run(root: Path, schedule: str, **kwargs) -> tuple[ColourOracleEngine, list]:  # type: ignore[no-untyped-def]
    dataset = _dataset(root)
    engine = ColourOracleEngine()
    results: list = []
    run_groups(
        dataset, dataset.images(), engine, ["oracle"], on_results=results.extend, schedule=schedule, **kwargs
    )
    return engine, results


def test_per_ref_asks_once_per_ref_isolated_and_scores_the_same(shaped_root: Path) -> None:
    dataset = _dataset(shaped_root)
    groups = dataset.images()
    n_refs = len({s.ref_id for g in groups for s in g.sentences})
    ours, ours_results = _run(shaped_root, "per-image")
    peers, peers_results = _run(shaped_root, "per-ref")
    assert len(ours.calls) == len(groups) and not any(ours.isolated)
    assert len(peers.calls) == n_refs > len(groups) and all(peers.isolated)
    key = lambda r: r.sent_id  # noqa: E731
    assert [(r.sent_id, r.iou) for r in sorted(ours_results, key=key)] == [
        (r.sent_id, r.iou) for r in sorted(peers_results, key=key)
    ]
    # per-ref: the image-level model call is paid once per ref, so more per sentence than per-image
    ours_calls = sum(r.model_calls["oracle_image_model"] for r in ours_results)
    peers_calls = sum(r.model_calls["oracle_image_model"] for r in peers_results)
    assert ours_calls == pytest.approx(len(groups))
    assert peers_calls == pytest.approx(n_refs)


def test_unknown_schedule_is_refused(shaped_root: Path) -> None:
    with pytest.raises(ValueError, match="unknown schedule 'per-sentence'"):
        _run(shaped_root, "per-sentence")


def test_results_arrive_in_image_order_with_and_without_prefetch(shaped_root: Path) -> None:
    _, threaded = _run(shaped_root, "per-image", prefetch=3)
    _, inline = _run(shaped_root, "per-image", prefetch=0)
    assert [r.sent_id for r in threaded] == [r.sent_id for r in inline]
    assert [r.image_id for r in threaded] == sorted(r.image_id for r in threaded)


def test_on_image_reports_each_image_with_its_calls(shaped_root: Path) -> None:
    seen: list[ImageDone] = []
    _run(shaped_root, "per-image", on_image=seen.append)
    groups = _dataset(shaped_root).images()
    assert [d.image_id for d in seen] == [g.image_id for g in groups]
    assert [d.sentences for d in seen] == [len(g.sentences) for g in groups]
    assert all(d.model_calls["oracle_image_model"] == 1 for d in seen)
    assert all(d.wall_seconds >= 0 for d in seen)


def test_stopping_mid_run_hands_on_finished_work_only(shaped_root: Path) -> None:
    dataset = _dataset(shaped_root)
    groups = dataset.images()
    engine = ColourOracleEngine()
    stored: list = []

    def stop_after_two(done: ImageDone) -> None:
        if done.image_id == groups[1].image_id:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_groups(dataset, groups, engine, ["oracle"], on_results=stored.extend, on_image=stop_after_two)
    images = {r.image_id for r in stored}
    assert images <= {groups[0].image_id, groups[1].image_id}
    for image_id in images:  # whatever was handed on is whole: every sentence of that image
        group = next(g for g in groups if g.image_id == image_id)
        assert sorted(r.sent_id for r in stored if r.image_id == image_id) == sorted(
            s.sent_id for s in group.sentences
        )


# -- the loader --------------------------------------------------------------------------------------------
def test_loader_decodes_ahead_in_order_and_reports_missing_images(shaped_root: Path, tmp_path: Path) -> None:
    dataset = _dataset(shaped_root)
    groups = dataset.images()
    work = [(g, [s.ann_id for s in g.sentences]) for g in groups]
    with PrefetchingLoader(dataset, work, depth=2) as loader:
        loaded = list(loader)
    assert [item.group.image_id for item in loaded] == [g.image_id for g in groups]
    for item in loaded:
        assert item.rgb is not None and item.rgb.shape == (120, 160, 3)
        assert set(item.gts) == {s.ann_id for s in item.group.sentences}
        assert item.decode_seconds > 0
    # a missing file is handed out with its error, in its place
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    holey = ReferDataset(shaped_root, "refcoco", "val", split_by="unc", image_dir=image_dir)
    with PrefetchingLoader(holey, work, depth=2) as loader:
        items = list(loader)
    assert all(isinstance(item.missing, MissingImageError) and item.rgb is None for item in items)


def test_loader_raises_a_reader_error_in_the_consumer_and_stops(shaped_root: Path) -> None:
    dataset = _dataset(shaped_root)
    groups = dataset.images()
    work = [(g, [s.ann_id for s in g.sentences]) for g in groups]
    work[1] = (groups[1], [-42])  # no such annotation
    with PrefetchingLoader(dataset, work, depth=2) as loader:
        iterator = iter(loader)
        assert next(iterator).group.image_id == groups[0].image_id
        with pytest.raises(Exception, match="42"):
            next(iterator)


def test_loader_thread_stops_when_the_consumer_stops_early(shaped_root: Path) -> None:
    dataset = _dataset(shaped_root)
    work = [(g, []) for g in dataset.images()] * 5
    before = threading.active_count()
    with PrefetchingLoader(dataset, work, depth=1) as loader:
        next(iter(loader))
    deadline = time.monotonic() + 30
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


# -- estimate ------------------------------------------------------------------------------------------------
def test_estimate_uses_the_warm_up_after_the_first_image() -> None:
    estimator = RunEstimator(images=10, sentences=70, warmup=3)
    assert estimator.observe(20.0, {"sam": 1, "clip": 7}) is None  # first image: loads the models
    assert estimator.observe(4.0, {"sam": 1, "clip": 7}) is None
    estimate = estimator.observe(6.0, {"sam": 1, "clip": 7})
    assert estimate is not None
    # 30 s so far, then 7 more images at the mean of images 2 and 3 (5 s)
    assert estimate.wall_seconds == pytest.approx(30.0 + 7 * 5.0)
    assert estimate.seconds_per_image == pytest.approx(5.0)
    assert estimate.model_calls == {"clip": pytest.approx(70.0), "sam": pytest.approx(10.0)}
    assert estimate.peak_memory_mb > 0
    assert estimator.observe(5.0, {}) is None  # made once
    estimate.measured_wall_seconds = 50.0
    assert estimate.error == pytest.approx(0.3)
    assert "about 65 s for 10 images / 70 sentences" in estimate.line()


def test_estimate_for_a_run_shorter_than_the_warm_up_and_per_worker() -> None:
    short = RunEstimator(images=2, sentences=10, warmup=3)
    assert short.observe(3.0, {}) is None
    assert short.observe(1.0, {}).wall_seconds == pytest.approx(4.0)
    two_workers = RunEstimator(images=9, sentences=9, warmup=1, workers=2)
    assert two_workers.observe(2.0, {}).wall_seconds == pytest.approx(2.0 + 8 * 2.0 / 2)
    with pytest.raises(ValueError):
        RunEstimator(images=1, sentences=1, warmup=0)


# -- profile -----------------------------------------------------------------------------------------------
def test_profile_groups_stages_into_phases() -> None:
    profile = RunProfile()
    profile.add("decode", 1.0)
    profile.add_predict(
        10.0,
        {
            "predict:global_local": {"calls": 1, "seconds": 10.0},
            "proposals": {"calls": 1, "seconds": 6.0},
            "clip_visual": {"calls": 1, "seconds": 2.5},
            "text": {"calls": 1, "seconds": 0.5},
            "scoring": {"calls": 1, "seconds": 0.25},
        },
    )
    profile.wall_seconds = 12.0
    assert profile.seconds["proposals"] == 6.0
    assert profile.seconds["features"] == 2.5
    assert profile.seconds["text + scoring"] == 0.75
    assert profile.seconds["other predict"] == pytest.approx(0.75)
    table = profile.table()
    assert "proposals" in table and "50.0%" in table and "background thread" in table
    assert set(PHASE_OF_STAGE.values()) == {"proposals", "features", "text + scoring"}


# -- the real engine, every pipeline (tiny models) ---------------------------------------------------------
TINY = {
    "proposal_source": "sam_tiny",
    "amg": {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
}


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from workers.engine.core.settings import EngineSettings
    from workers.engine.runtime import Engine
    from workers.engine.store.ensure import ensure
    from workers.engine.store.manifest import ModelStore

    model_dir = tmp_path_factory.mktemp("schedule-models")
    ensure(ModelStore(model_dir))
    return Engine(EngineSettings(model_dir=model_dir, cache_dir=None, device="cpu", profile="tiny"))


@pytest.mark.parametrize("pipeline", ["global_local", "tas", "refdiff", "lgd"])
def test_real_pipelines_per_ref_redo_image_work_and_stages_do_not_nest(
    tiny_engine, shaped_root: Path, pipeline: str
) -> None:
    dataset = _dataset(shaped_root)
    groups = dataset.images()[:2]
    n_refs = len({s.ref_id for g in groups for s in g.sentences})
    outcome = {}
    for schedule in ("per-image", "per-ref"):
        from workers.engine.core.cache import FeatureCache

        tiny_engine.cache = FeatureCache(memory_bytes=256 << 20)
        profile = RunProfile()
        results: list = []
        run_groups(
            dataset,
            groups,
            tiny_engine,
            [pipeline],
            configs={pipeline: TINY},
            on_results=results.extend,
            schedule=schedule,
            profile=profile,
        )
        proposals = sum(r.model_calls.get("sam_tiny", 0.0) for r in results)
        outcome[schedule] = (sorted((r.sent_id, round(r.iou, 9)) for r in results), proposals, profile)
    assert outcome["per-image"][0] == outcome["per-ref"][0]  # the schedule never changes a score
    assert outcome["per-image"][1] == pytest.approx(len(groups))
    assert outcome["per-ref"][1] == pytest.approx(n_refs)
    for _, _, profile in outcome.values():
        inside = sum(profile.seconds.get(p, 0.0) for p in ("proposals", "features", "text + scoring"))
        predict_total = inside + profile.seconds["other predict"]
        # every stage a pipeline times is inside predict and they do not overlap
        assert inside <= predict_total + 1e-6
        assert sum(profile.stages.values()) == pytest.approx(inside)


# -- the command -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_command_prints_estimate_profile_and_records_them(
    shaped_root: Path, tmp_path: Path, use_oracle
) -> None:
    text = run_benchmark(shaped_root, tmp_path / "run", "--profile", "--warmup", "2", "--schedule", "per-ref")
    assert "Estimate from the first 2 image(s)" in text
    assert "Wall time:" in text and "measured" in text and "estimated" in text
    assert "Where the time went:" in text and "waiting for images" in text
    assert all(use_oracle[0].isolated)
    document = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert document["run"]["schedule"] == "per-ref"
    assert document["run"]["estimate"]["basis_images"] == 2
    assert document["run"]["estimate"]["measured_wall_seconds"] > 0
    assert "decode" in document["run"]["profile"]["phases"]


@pytest.mark.django_db
def test_resume_with_another_schedule_is_refused(shaped_root: Path, tmp_path: Path, use_oracle) -> None:
    out = tmp_path / "run"
    run_benchmark(shaped_root, out, "--limit", "3")
    with pytest.raises(CommandError, match="schedule"):
        run_benchmark(shaped_root, out, "--limit", "3", "--resume", "--schedule", "per-ref")


@pytest.mark.django_db
def test_worker_rates_from_finished_shards() -> None:
    from datetime import timedelta

    from django.utils import timezone

    from server.benchmarks import selectors
    from server.benchmarks.models import BenchmarkRun, BenchmarkShard

    run = BenchmarkRun.objects.create(dataset="refcoco", split_by="unc", split="val", pipelines=["a", "b"])
    now = timezone.now()
    for index, (worker, seconds, sentences, state) in enumerate(
        [("w1", 10, 5, "done"), ("w1", 30, 15, "done"), ("w2", 8, 4, "done"), ("w3", 1, 9, "running")]
    ):
        BenchmarkShard.objects.create(
            run=run,
            index=index,
            worker=worker,
            n_sentences=sentences,
            state=state,
            started_at=now,
            finished_at=now + timedelta(seconds=seconds) if state == "done" else None,
        )
    rates = selectors.worker_rates(run=run)
    assert set(rates) == {"w1", "w2"}
    assert rates["w1"] == {"shards": 2, "sentences": 40, "seconds": 40.0, "sentences_per_second": 1.0}
    assert rates["w2"]["sentences_per_second"] == pytest.approx(1.0)
