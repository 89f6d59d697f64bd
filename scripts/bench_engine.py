#!/usr/bin/env python
"""Benchmark (not a test): the first vs the second expression on one image, and batched vs per-mask CLIP.

Runs Global-Local CLIP on CPU with real-size models carrying random weights (a trained model costs the
same time): CLIP ViT-B/16 and SAM ViT-B, written into a temporary model store in their real on-disk
formats (an open_clip folder with ``open_clip_config.json`` + safetensors, a segment-anything state-dict
checkpoint) and loaded through the engine's own loaders. Random SAM weights give masks of no meaning
and nearly identical ones, so the generator's quality thresholds and its duplicate suppression are
turned off and the ``--masks`` largest proposals are kept, a count typical of SAM on a COCO photo: CLIP
then does the work it does on a real image. The timing, not the masks, is what this measures.

Prints: seconds for the first expression on an image (proposals, CLIP features of every mask, text,
scoring), seconds for a second expression on the same image, their ratio, and the speed-up of the batched
CLIP mask forwards over one forward per mask. Model loading is not timed (a worker keeps its models
loaded); ``--warmup`` also runs one untimed image first.

Usage::

    .venv/bin/python scripts/bench_engine.py [--points-per-side 8] [--masks 40] [--store DIR] [--warmup]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.engine.blocks.proposals.cached import proposal_params
from workers.engine.core.settings import EngineSettings
from workers.engine.core.types import ImageInput  # noqa: E402
from workers.engine.runtime import Engine
from workers.engine.store.catalogue import catalogue_entry  # noqa: E402
from workers.engine.store.fetch import fetch
from workers.engine.store.loaders.sam import build_sam
from workers.engine.store.manifest import ModelStore

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def write_random_clip_vit_b_16(store: ModelStore) -> None:
    """ViT-B/16 with random weights as an open_clip folder, recorded as ``clip_vit_b_16``."""
    import open_clip
    from safetensors.torch import save_file

    if store.status("clip_vit_b_16") == "present":
        return
    folder = store.path("clip_vit_b_16")
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": open_clip.get_model_config("ViT-B-16") | {"quick_gelu": True},
        "preprocess_cfg": {"size": 224, "mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic"},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False, device="cpu")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / catalogue_entry("clip_vit_b_16").arch["checkpoint"]))
    fetch(store, "clip_vit_b_16", source_dir=folder)


def write_random_sam_vit_b(store: ModelStore) -> None:
    """SAM ViT-B with random weights as a segment-anything checkpoint, recorded as ``sam_vit_b``."""
    if store.status("sam_vit_b") == "present":
        return
    arch = catalogue_entry("sam_vit_b").arch
    folder = store.path("sam_vit_b")
    target = folder / arch["checkpoint"]
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_sam(arch).state_dict(), target)
    fetch(store, "sam_vit_b", source_dir=folder)


def photo(name: str) -> ImageInput:
    from skimage import data

    rgb = np.ascontiguousarray(getattr(data, name)()[..., :3]).astype(np.uint8)
    return ImageInput(rgb=rgb, sha256=hashlib.sha256(rgb.tobytes()).hexdigest())


def seconds(fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--points-per-side", type=int, default=8, help="SAM prompt grid (SAM's default is 32)"
    )
    parser.add_argument("--masks", type=int, default=40, help="proposals kept per image (the largest)")
    parser.add_argument(
        "--store", type=Path, default=None, help="model store to (re)use; default: a temp dir"
    )
    parser.add_argument("--warmup", action="store_true", help="run one untimed image before timing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    root = args.store or Path(tempfile.mkdtemp(prefix="bench-engine-"))
    store = ModelStore(root)
    print(f"model store: {root} (random-weight ViT-B/16 and SAM ViT-B in their real formats)", flush=True)
    write_random_clip_vit_b_16(store)
    write_random_sam_vit_b(store)

    engine = Engine(EngineSettings(model_dir=root, cache_dir=None, device="cpu", profile="paper"))
    config = {
        "clip_model": "clip_vit_b_16",
        "proposal_source": "sam_vit_b",
        "amg": {
            "points_per_side": args.points_per_side,
            "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0,
            "box_nms_thresh": 1.0,
        },
        "max_proposals": args.masks,
    }
    pipeline = engine.pipeline("global_local", config)

    warm, image = photo("coffee"), photo("astronaut")
    print("loading models (not timed) ...", flush=True)
    load_s, _ = seconds(lambda: (engine.hub.get("sam_vit_b"), engine.hub.get("clip_vit_b_16")))
    warm_s = 0.0
    if args.warmup:
        warm_s, _ = seconds(lambda: engine.predict(warm, ["a cup"], pipeline="global_local", config=config))
    engine.meter.reset()

    print("timing the first and the second expression ...", flush=True)
    first_s, first = seconds(
        lambda: engine.predict(
            image, ["the woman in a white space suit"], pipeline="global_local", config=config
        )
    )
    first_meter = engine.meter.snapshot()
    engine.meter.reset()
    second_s, second = seconds(
        lambda: engine.predict(image, ["the flag on the left"], pipeline="global_local", config=config)
    )
    second_meter = engine.meter.snapshot()
    n_masks = len(first[0])

    # Batched vs per-mask CLIP forwards on the same masks.
    print("timing batched and per-mask CLIP forwards ...", flush=True)
    ctx = engine.context(image)
    proposals = pipeline.proposals(ctx)
    masks = proposals.to_tensor()
    extractor = pipeline._extractors.get("clip_vit_b_16", pipeline.config.feature_settings)
    prepared = extractor.prepare_image(image.rgb)
    batched_s, batched = seconds(
        lambda: (extractor.global_features(prepared, masks), extractor.local_features(prepared, masks))
    )
    looped_s, looped = seconds(
        lambda: (
            extractor.global_features_per_mask(prepared, masks),
            extractor.local_features_per_mask(prepared, masks),
        )
    )
    max_diff = (
        max(float((a - b).abs().max()) for a, b in zip(batched, looped, strict=True)) if n_masks else 0.0
    )

    ratio = second_s / first_s
    cpu = platform.processor() or platform.machine()
    print()
    print(
        f"machine: {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"image: scikit-image astronaut {image.width}x{image.height}")
    print(f"SAM ViT-B points_per_side={args.points_per_side} (SAM's default is 32; reduced for a 2-core CPU)")
    raw_key = ctx.key("proposals", proposal_params(engine.hub, "sam_vit_b", pipeline.config.amg))
    raw = len(engine.cache.get(raw_key)["rles"])
    print(
        f"proposals: {raw} generated, {n_masks} kept (the {args.masks} largest); second expression ranked {len(second[0])}"
    )
    warm_note = f"warm-up image (coffee): {warm_s:.1f} s" if args.warmup else "no warm-up image"
    print(f"model load (not timed below): {load_s:.1f} s; {warm_note}")
    print()
    print(f"first expression on the image : {first_s:8.3f} s")
    print(f"second expression, same image : {second_s:8.3f} s")
    print(
        f"ratio second / first          : {100 * ratio:8.2f} %   (goal <= 5 %: {'met' if ratio <= 0.05 else 'NOT met'})"
    )
    print()
    print(f"CLIP mask features, batched   : {batched_s:8.3f} s for {n_masks} masks (global + local)")
    print(f"CLIP mask features, per mask  : {looped_s:8.3f} s")
    print(
        f"batched speed-up              : {looped_s / batched_s:8.2f} x   (max |difference| {max_diff:.2e})"
    )
    print()
    print(
        "first expression, per stage  :",
        json.dumps({k: round(v["seconds"], 3) for k, v in first_meter["stages"].items()}),
    )
    print(
        "first expression, model calls:",
        json.dumps({k: v["calls"] for k, v in first_meter["models"].items()}),
    )
    print(
        "second expression, per stage :",
        json.dumps({k: round(v["seconds"], 3) for k, v in second_meter["stages"].items()}),
    )
    print(
        "second expression, model calls:",
        json.dumps({k: v["calls"] for k, v in second_meter["models"].items()}),
    )


if __name__ == "__main__":
    main()
