"""The prepared GPU check of the benchmark path: both schedules, every pipeline, a dozen COCO-size images.

    .venv/bin/python scripts/gpu_check.py [--images 12] [--budget 540] [--json gpu_check.json]

Run it whenever a GPU is lent to a session (it exits by itself within ``--budget`` seconds, default 540, so
under ten minutes on one GPU) and record what it prints in docs/PERFORMANCE.md with the device name.

What it builds, in a temporary model store (nothing is downloaded):

- SAM ViT-H (the papers' proposal model) and CLIP ViT-B/16 at their real sizes with random weights, in the
  real on-disk formats, loaded by the real loaders, so proposals and CLIP features cost what they cost with
  the published weights;
- the captioner (TAS), the MLLM (LGD) and Stable Diffusion (Ref-Diff) as the store's tiny random stand-ins,
  named per pipeline in the config overrides below: those three pipelines' generative stage is therefore
  *not* at its real cost here, and the script says so in its output.

For each pipeline it writes a RefCOCO-shaped synthetic split (640 x 480 images, about 2.5 refs and 7
sentences per image), runs the benchmark loop over ``--images`` images in our per-image schedule and in the
peers' per-ref schedule, and prints seconds per image and per sentence, the GPU's mean utilisation over the
pass (``nvidia-smi``, sampled every 0.2 s) and the peak CUDA memory. Random weights: costs only, never quality.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PIPELINES = ("global_local", "tas", "refdiff", "lgd")
STAND_INS = {  # per pipeline: config keys naming a tiny stand-in (not at real cost here)
    "global_local": {},
    "tas": {"captioner_model": "captioner_tiny"},
    "refdiff": {"diffusion_model": "sd_tiny"},
    "lgd": {"mllm_model": "mllm_tiny"},
}
REAL_SIZE = {"proposal_source": "sam_vit_h", "clip_model": "clip_vit_b_16"}


class GpuSampler:
    """Samples ``nvidia-smi``'s utilisation of GPU 0 in a thread; ``mean()`` over the samples."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                )
                self.samples.append(float(out.stdout.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.period)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def build_store(root: Path) -> Any:
    """The temporary store: real-size random SAM ViT-H and CLIP ViT-B/16, plus the tiny stand-ins."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_engine import write_random_clip_vit_b_16

    from workers.engine.store.catalogue import catalogue_entry
    from workers.engine.store.ensure import ensure
    from workers.engine.store.fetch import fetch
    from workers.engine.store.loaders.sam import build_sam
    from workers.engine.store.manifest import ModelStore

    store = ModelStore(root)
    ensure(store)
    write_random_clip_vit_b_16(store)
    arch = catalogue_entry("sam_vit_h").arch
    target = store.path("sam_vit_h") / arch["checkpoint"]
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_sam(arch).state_dict(), target)
    fetch(store, "sam_vit_h", source_dir=store.path("sam_vit_h"))
    return store


def main(argv: list[str] | None = None) -> int:
    import torch

    from workers.engine.core.cache import FeatureCache
    from workers.engine.core.settings import EngineSettings
    from workers.engine.data.benchmark.runner import SCHEDULES, run_groups
    from workers.engine.data.refer import ReferDataset
    from workers.engine.data.synthetic import write_synthetic_refcoco
    from workers.engine.methods.catalogue import pipeline_entry
    from workers.engine.runtime import Engine

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument(
        "--budget", type=float, default=540.0, help="stop starting new passes after S seconds"
    )
    parser.add_argument("--pipeline", action="append", dest="pipelines", choices=PIPELINES)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a smoke run of the script itself only"
    )
    parser.add_argument("--points-per-side", type=int, default=None, help="automatic-mask density override")
    args = parser.parse_args(argv)
    started = time.monotonic()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print(
            "No CUDA device: this check is for a GPU machine (the CPU figures come from bench_schedule.py)."
        )
        return 2
    device = torch.cuda.get_device_name(0) if cuda else "cpu (smoke run)"
    print(f"Device: {device}; torch {torch.__version__}", flush=True)
    report: dict[str, Any] = {"device": device, "images": args.images, "pipelines": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        build_store(tmp_path / "models")
        print(
            f"Store built in {time.monotonic() - started:.0f} s (real-size random SAM ViT-H, CLIP ViT-B/16)"
        )
        write_synthetic_refcoco(tmp_path / "data", args.images * 3, refcoco_shaped=True)  # val gets a third
        dataset = ReferDataset(tmp_path / "data", "refcoco", "val", split_by="unc")
        groups = dataset.images()[: args.images]
        n_sentences = sum(len(g.sentences) for g in groups)
        settings = EngineSettings(
            model_dir=tmp_path / "models", cache_dir=None, device=args.device, profile="paper"
        )
        engine = Engine(settings)
        for pipeline in args.pipelines or PIPELINES:
            fields = {k for k, _ in type(pipeline_entry(pipeline).resolve(None, "paper")).model_fields()}
            config: dict[str, Any] = {k: v for k, v in REAL_SIZE.items() if k in fields} | STAND_INS[pipeline]
            if args.points_per_side:
                config["amg"] = {"points_per_side": args.points_per_side}
            note = ", ".join(
                f"{k}={v} (tiny stand-in: not at real cost)" for k, v in STAND_INS[pipeline].items()
            )
            run_groups(
                dataset, groups[:1], engine, [pipeline], configs={pipeline: config}, on_results=lambda r: None
            )
            for schedule in SCHEDULES:
                if time.monotonic() - started > args.budget:
                    print(f"{pipeline} {schedule}: skipped (budget of {args.budget:.0f} s spent)", flush=True)
                    continue
                engine.cache = FeatureCache(memory_bytes=settings.cache_memory_mb << 20)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                results: list[Any] = []
                with GpuSampler() as sampler:
                    t0 = time.perf_counter()
                    run_groups(
                        dataset,
                        groups,
                        engine,
                        [pipeline],
                        configs={pipeline: config},
                        on_results=results.extend,
                        schedule=schedule,
                    )
                    if cuda:
                        torch.cuda.synchronize()
                    wall = time.perf_counter() - t0
                entry = {
                    "seconds_per_image": wall / len(groups),
                    "seconds_per_sentence": wall / n_sentences,
                    "gpu_utilisation_percent": sampler.mean(),
                    "peak_cuda_memory_mb": torch.cuda.max_memory_allocated() / (1 << 20) if cuda else 0.0,
                    "stand_ins": STAND_INS[pipeline],
                }
                report["pipelines"].setdefault(pipeline, {})[schedule] = entry
                util = entry["gpu_utilisation_percent"]
                print(
                    f"{pipeline:<13} {schedule:<9} {entry['seconds_per_image']:.3f} s/image, "
                    f"{entry['seconds_per_sentence']:.3f} s/sentence, GPU "
                    f"{'n/a' if util is None else f'{util:.0f} %'}, peak {entry['peak_cuda_memory_mb']:.0f} MiB"
                    + (f" [{note}]" if note else ""),
                    flush=True,
                )
    report["seconds"] = time.monotonic() - started
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(f"Done in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
