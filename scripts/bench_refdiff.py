#!/usr/bin/env python
"""Seconds per sentence of the ``refdiff`` pipeline on CPU, peak memory, and what dominates.

Two model sizes, both with random weights (wiring and cost only, never quality):

- ``tiny``: the store's ``sd_tiny`` and ``clip_tiny`` (written into a temporary store unless
  ``--model-dir`` names one that has them);
- ``sd15``: real-size Stable Diffusion 1.5 parts built in memory from their published configs (UNet
  ~860 M parameters, the KL VAE, a 12-layer CLIP text encoder with the real BPE tokenizer) and a real-size
  open_clip ViT-B/16, handed to the pipeline through a small in-memory hub.

Each run predicts ``--sentences`` sentences on one synthetic image in one ``predict`` call (cold: the VAE
encode is included), then the same sentences again (warm: every map is a cache hit), and prints JSON with
seconds per sentence, the meter's per-stage seconds and the peak resident memory of the process
(``resource.getrusage``). Run one size per process so the peak memory is that size's::

    .venv/bin/python scripts/bench_refdiff.py --size tiny
    .venv/bin/python scripts/bench_refdiff.py --size sd15 --image-size 512
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SENTENCES = [
    "the man in the red shirt on the left",
    "a blue car parked near the skateboarder",
    "bright lamp above the table",
    "the dog lying on the right",
]

SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD15_VAE = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}
SD15_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


class MemoryHub:
    """The part of ``ModelHub`` a pipeline uses: ``get(name)`` and load counts, over prebuilt models."""

    store = None

    def __init__(self, models: dict[str, Any]) -> None:
        self.models = models
        self.load_counts: dict[str, int] = {}

    def get(self, name: str) -> Any:
        if name not in self.models:
            raise KeyError(f"the benchmark hub has no model {name!r}; it has {sorted(self.models)}")
        return self.models[name]

    def is_loaded(self, name: str) -> bool:
        return name in self.models


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_sd15_hub(tokenizer_dir: Path) -> tuple[MemoryHub, float]:
    """Real-size random SD 1.5 parts and ViT-B/16 in memory; returns the hub and build seconds."""
    import open_clip
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from workers.engine.store.loaders.clip import ClipBundle
    from workers.engine.store.loaders.diffusers import DiffusionBundle
    from workers.engine.store.tiny.generative import SD15_SCHEDULER_CONFIG

    started = time.perf_counter()
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE).eval(),
        text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).eval(),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**SD15_UNET).eval(),
        scheduler=DDIMScheduler(**SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    clip = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True).eval()
    clip_bundle = ClipBundle(
        name="clip_vit_b_16",
        model=clip,
        tokenizer=open_clip.get_tokenizer("ViT-B-16"),
        preprocess_cfg=dict(clip.visual.preprocess_cfg),
        device=torch.device("cpu"),
    )
    hub = MemoryHub(
        {
            "sd_1_5": DiffusionBundle(pipe=pipe, device=torch.device("cpu"), dtype=torch.float32),
            "clip_vit_b_16": clip_bundle,
        }
    )
    return hub, time.perf_counter() - started


def synthetic_image(height: int, width: int) -> Any:
    from workers.engine.core.types import ImageInput

    rng = np.random.default_rng(0)
    rgb = np.full((height, width, 3), 128, dtype=np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, height - 60), rng.integers(0, width - 60)
        rgb[y : y + 60, x : x + 80] = rng.integers(0, 256, size=3)
    return ImageInput(rgb=rgb, sha256=hashlib.sha256(rgb.tobytes()).hexdigest())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "sd15"], required=True)
    parser.add_argument("--image-size", type=int, default=None, help="SD input side (tiny: 256, sd15: 1024)")
    parser.add_argument("--sentences", type=int, default=2, help="sentences on the image (at most 4)")
    parser.add_argument(
        "--proposal-source", default="attention", help="attention (proposal-free) or a SAM name"
    )
    parser.add_argument("--no-clip", action="store_true", help="generative score only (no CLIP)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="tiny: a store holding sd_tiny, clip_tiny"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from workers.engine.core.cache import FeatureCache
    from workers.engine.core.meter import Meter
    from workers.engine.hub import ModelHub
    from workers.engine.methods.registry import build_pipeline
    from workers.engine.store.manifest import ModelStore
    from workers.engine.store.tiny.writers import write_tiny

    temp = tempfile.TemporaryDirectory(prefix="bench-refdiff-")
    store = ModelStore(args.model_dir or Path(temp.name))
    for name in ("sd_tiny", "clip_tiny"):
        if store.status(name) != "present":
            write_tiny(store, name)
    build_seconds = 0.0
    if args.size == "tiny":
        hub: Any = ModelHub(store, device="cpu")
        started = time.perf_counter()
        hub.get("sd_tiny")
        if not args.no_clip:
            hub.get("clip_tiny")
        build_seconds = time.perf_counter() - started
        profile, image_size = "tiny", args.image_size or 256
    else:
        hub, build_seconds = build_sd15_hub(store.path("sd_tiny") / "tokenizer")
        profile, image_size = "paper", args.image_size or 1024

    meter, cache = Meter(), FeatureCache()
    config = {
        "proposal_source": args.proposal_source,
        "image_size": image_size,
        "use_discriminative": not args.no_clip,
        "min_area": 0,
    }
    pipeline = build_pipeline("refdiff", config, hub, cache, meter, profile=profile)
    image = synthetic_image(480, 640)
    sentences = SENTENCES[: max(1, min(args.sentences, len(SENTENCES)))]
    ctx = pipeline.context(image)
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    with torch.inference_mode():
        results = pipeline.predict(ctx, sentences)
    cold = time.perf_counter() - started
    cold_stages = meter.snapshot()
    meter.reset()
    started = time.perf_counter()
    with torch.inference_mode():
        pipeline.predict(ctx, sentences)
    warm = time.perf_counter() - started
    report = {
        "size": args.size,
        "image": list(image.rgb.shape[:2]),
        "sd_input": image_size,
        "sentences": len(sentences),
        "proposal_source": args.proposal_source,
        "clip": not args.no_clip,
        "threads": torch.get_num_threads(),
        "build_or_load_seconds": round(build_seconds, 2),
        "cold_seconds_per_sentence": round(cold / len(sentences), 2),
        "warm_seconds_per_sentence": round(warm / len(sentences), 2),
        "candidates": [len(r) for r in results],
        "peak_rss_mb_before_predict": round(rss_before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "cold_stages": {
            k: {"calls": v["calls"], "seconds": round(v["seconds"], 2)}
            for k, v in cold_stages["stages"].items()
        },
        "cold_models": {
            k: {"calls": v["calls"], "seconds": round(v["seconds"], 2)}
            for k, v in cold_stages["models"].items()
        },
        "warm_stages": {
            k: {"calls": v["calls"], "seconds": round(v["seconds"], 2)}
            for k, v in meter.snapshot()["stages"].items()
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    temp.cleanup()


if __name__ == "__main__":
    main()
