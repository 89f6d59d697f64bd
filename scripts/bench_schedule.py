"""Our per-image schedule against the peers' per-ref schedule, per pipeline, measured in one process.

    .venv/bin/python scripts/bench_schedule.py [--images 6] [--points-per-side 8] [--pipeline global_local ...]
        [--rounds 1] [--json OUT.json]

Writes a RefCOCO-shaped synthetic split (about 2.5 refs and 7 sentences per image, 640 x 480 images;
``write_synthetic_refcoco(refcoco_shaped=True)``), then for each pipeline runs the benchmark loop
(``run_groups``) over its ``val`` split twice, once per schedule, on the same engine with an empty cache each
time, and prints seconds (wall and CPU) and model calls per sentence for both, with the ratio per-ref /
per-image. Models load before the first timed run, so neither schedule pays for loading.

CPU seconds (``time.process_time``, all threads of this process) are the figure to compare on a shared
machine: they do not count time spent waiting for a core. The models are those of ``RIS_MODEL_PROFILE``
(default ``tiny``: real MobileSAM proposals, random-weight stand-ins for the rest; costs only, never
quality). The store is ``RIS_MODEL_DIR`` (``manage.py models ensure`` fills it). Results: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.engine.core.cache import FeatureCache  # noqa: E402
from workers.engine.core.settings import EngineSettings  # noqa: E402
from workers.engine.data.benchmark.runner import SCHEDULES, run_groups  # noqa: E402
from workers.engine.data.refer import ReferDataset  # noqa: E402
from workers.engine.data.synthetic import write_synthetic_refcoco  # noqa: E402
from workers.engine.runtime import Engine  # noqa: E402

PIPELINES = ("global_local", "tas", "refdiff", "lgd")


def amg_override(pipeline: str, points: int | None) -> dict[str, Any]:
    return {"amg": {"points_per_side": points}} if points else {}


def measure(
    engine: Engine, dataset: ReferDataset, pipeline: str, config: dict, schedule: str
) -> dict[str, Any]:
    """One pass over the split with ``schedule``; seconds, CPU seconds and model calls per sentence."""
    engine.cache = FeatureCache(memory_bytes=engine.settings.cache_memory_mb << 20)  # nothing carried over
    results: list[Any] = []
    groups = dataset.images()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    run_groups(
        dataset,
        groups,
        engine,
        [pipeline],
        configs={pipeline: config},
        on_results=results.extend,
        schedule=schedule,
    )
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    n = len(results)
    calls: dict[str, float] = {}
    for r in results:
        for model, v in r.model_calls.items():
            calls[model] = calls.get(model, 0.0) + v
    return {
        "schedule": schedule,
        "sentences": n,
        "images": len(groups),
        "refs": len({r.ref_id for r in results}),
        "wall_per_sentence": wall / n,
        "cpu_per_sentence": cpu / n,
        "calls_per_sentence": sum(calls.values()) / n,
        "calls_by_model": {m: v / n for m, v in sorted(calls.items())},
        "ious": [round(r.iou, 6) for r in sorted(results, key=lambda r: r.sent_id)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--points-per-side", type=int, default=8, help="automatic-mask density (default 8)")
    parser.add_argument("--pipeline", action="append", dest="pipelines", choices=PIPELINES)
    parser.add_argument("--rounds", type=int, default=1, help="alternating passes per schedule (default 1)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    pipelines = args.pipelines or list(PIPELINES)
    settings = EngineSettings.from_env().replace(cache_dir=None, device="cpu")
    engine = Engine(settings)
    out: dict[str, Any] = {
        "profile": settings.profile,
        "images": args.images,
        "points_per_side": args.points_per_side,
        "cpus": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "pipelines": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        summary = write_synthetic_refcoco(tmp, args.images, refcoco_shaped=True)
        dataset = ReferDataset(tmp, "refcoco", "val", split_by="unc")
        groups = dataset.images()
        n_sent = sum(len(g.sentences) for g in groups)
        n_refs = len({s.ref_id for g in groups for s in g.sentences})
        print(
            f"RefCOCO-shaped synthetic val: {len(groups)} images, {n_refs} refs, {n_sent} sentences "
            f"({n_refs / len(groups):.1f} refs, {n_sent / len(groups):.1f} sentences per image; "
            f"{summary.n_images} images written over val/testA/testB); profile {settings.profile}",
            flush=True,
        )
        for pipeline in pipelines:
            config = amg_override(pipeline, args.points_per_side)
            # Load the models once, outside the timed passes.
            run_groups(
                dataset, groups[:1], engine, [pipeline], configs={pipeline: config}, on_results=lambda r: None
            )
            passes: dict[str, list[dict[str, Any]]] = {s: [] for s in SCHEDULES}
            for _ in range(args.rounds):
                for schedule in SCHEDULES:
                    passes[schedule].append(measure(engine, dataset, pipeline, config, schedule))
            best = {s: min(p, key=lambda m: m["cpu_per_sentence"]) for s, p in passes.items()}
            ours, peers = best["per-image"], best["per-ref"]
            same = ours["ious"] == peers["ious"]
            entry = {
                "per-image": {k: v for k, v in ours.items() if k != "ious"},
                "per-ref": {k: v for k, v in peers.items() if k != "ious"},
                "cpu_ratio": peers["cpu_per_sentence"] / ours["cpu_per_sentence"],
                "wall_ratio": peers["wall_per_sentence"] / ours["wall_per_sentence"],
                "calls_ratio": peers["calls_per_sentence"] / ours["calls_per_sentence"],
                "same_ious": same,
            }
            out["pipelines"][pipeline] = entry
            print(
                f"{pipeline:<13} per-image {ours['cpu_per_sentence']:.3f} CPU s/sent ({ours['wall_per_sentence']:.3f} wall), "
                f"{ours['calls_per_sentence']:.2f} calls/sent | per-ref {peers['cpu_per_sentence']:.3f} CPU s/sent "
                f"({peers['wall_per_sentence']:.3f} wall), {peers['calls_per_sentence']:.2f} calls/sent | "
                f"ratio CPU {entry['cpu_ratio']:.2f}x, wall {entry['wall_ratio']:.2f}x, calls {entry['calls_ratio']:.2f}x"
                f" | same IoUs: {same}",
                flush=True,
            )
    out["load_average_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
