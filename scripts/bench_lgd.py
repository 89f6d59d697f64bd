"""Cost of LGD's generative descriptions: MLLM calls and seconds per sentence, batched vs one by one.

    .venv/bin/python scripts/bench_lgd.py [--models tiny,smolvlm] [--expressions 4] [--max-new-tokens 24]
        [--repeats 2] [--threads 2] [--json OUT.json]

For each model, one image and E expressions are described (both prompt kinds, 2 E sequences) two ways:

- ``batched``: the pipeline's way, every sequence of the image in one left-padded ``generate`` call;
- ``one_by_one``: one ``generate`` call per sequence (the shape of a per-sentence peer loop).

No cache is involved (each run starts cold), so the figures are pure MLLM cost. Models (random weights, in
memory; a random model proves cost, never quality, and its texts are noise):

- ``tiny``: the store's ``mllm_tiny`` layout (LLaVA-1.5, 2 + 2 layers of width 32), written to a temp folder
  and loaded through ``load_mllm`` (the production path);
- ``smolvlm``: an Idefics3 model with SmolVLM-256M-Instruct's sizes (SigLIP 768 x 12 layers at 512 px, pixel
  shuffle 4 -> 64 image tokens, a Llama of 576 x 30 layers, 49 280-token embedding, ~256 M parameters),
  with image splitting off (one 512 px view; SmolVLM's default splits up to 4 x 4 tiles + 1, 17x the image
  tokens). Its tokenizer is a small byte-level BPE trained here, so prompts are shorter in tokens than with
  the real one.

``build_idefics3_bundle`` is also used by the tests (a tiny Idefics3 shows the generator works with a second
chat-template family). This file is a script, not a test; docs/perf/lgd.md records its output.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workers.engine.core.meter import Meter  # noqa: E402
from workers.engine.methods.lgd.config import GenerationConfig
from workers.engine.methods.lgd.descriptions import DescriptionGenerator, DescriptionRequest
from workers.engine.methods.lgd.prompt_set import load_prompt_set
from workers.engine.store.loaders.transformers import MllmBundle, load_mllm  # noqa: E402

#: SmolVLM-style chat shape: "<|im_start|>User:<image>text<end_of_utterance>\nAssistant:".
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

IDEFICS3_SHAPES: dict[str, dict[str, Any]] = {
    # SmolVLM-256M-Instruct's sizes.
    "smolvlm_256m": {
        "vision": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 512,
            "patch_size": 16,
        },
        "text": {
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "max_position_embeddings": 8192,
            "rope_theta": 100000.0,
        },
        "vocab_size": 49280,
        "scale_factor": 4,
    },
    # Small enough for unit tests.
    "tiny": {
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
        },
        "text": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
        },
        "vocab_size": None,
        "scale_factor": 2,
    },
}

_CORPUS = (
    "a photo of a man in a white shirt standing on the left of the table",
    "a photo of the woman surrounded by two chairs, a dog and a red car",
    "the small dog sitting on the couch near the window",
    "player in the striped jersey behind the catcher",
    "In this image, the expression refers to one object. Describe the objects around it in one short sentence.",
    "Describe that object's key attributes (what it is, its colour, clothing, pose or action).",
    "User Assistant left right middle top bottom front back big small blue green yellow black white",
)


def _idefics3_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = [
        "<|endoftext|>",
        "<|im_start|>",
        "<end_of_utterance>",
        "<fake_token_around_image>",
        "<image>",
        "<global-img>",
    ] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        padding_side="left",
        additional_special_tokens=special[3:],
    )


def build_idefics3_bundle(shape: str = "tiny", seed: int = 0, device: str = "cpu") -> MllmBundle:
    """A random-weight Idefics3 (SmolVLM layout) model and its processor, in memory, in float32."""
    from transformers import (
        GenerationConfig,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    spec = IDEFICS3_SHAPES[shape]
    tokenizer = _idefics3_tokenizer()
    vision = spec["vision"]
    image_seq_len = (vision["image_size"] // vision["patch_size"]) ** 2 // spec["scale_factor"] ** 2
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": vision["image_size"]},
        max_image_size={"longest_edge": vision["image_size"]},
        do_image_splitting=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    tokenizer = processor.tokenizer
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(**vision),
        text_config=LlamaConfig(
            vocab_size=spec["vocab_size"] or len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **spec["text"],
        ),
        scale_factor=spec["scale_factor"],
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    dev = torch.device(device)
    return MllmBundle(model=model.to(dev), processor=processor, device=dev, dtype=torch.float32)


def tiny_llava_bundle(folder: Path) -> MllmBundle:
    """The store's ``mllm_tiny`` layout, written to ``folder`` and loaded through ``load_mllm``."""
    from workers.engine.store.tiny.generative import write_tiny_mllm

    write_tiny_mllm(folder)
    return load_mllm(folder, "cpu")


EXPRESSIONS = (
    "the man in the white shirt on the left",
    "woman in red dress standing on the right",
    "small dog sitting on the couch",
    "blue umbrella above the table",
    "player in the striped jersey",
    "white truck in the background",
    "the second banana from the left",
    "kid wearing a yellow hat",
)


def _requests(n: int) -> list[DescriptionRequest]:
    from workers.engine.blocks.text import parse_expression

    out = []
    for expression in (EXPRESSIONS * (n // len(EXPRESSIONS) + 1))[:n]:
        phrase = parse_expression(expression).noun_phrase
        out.extend(DescriptionRequest(expression, phrase, kind) for kind in ("attribute", "surrounding"))
    return out


def _timed(
    bundle: MllmBundle, rgb: np.ndarray, requests: list, settings: GenerationConfig, one_by_one: bool
) -> dict:
    meter = Meter()
    generator = DescriptionGenerator(bundle, "mllm", load_prompt_set("lgd"), settings, meter)
    start = time.perf_counter()
    if one_by_one:
        made = [d for r in requests for d in generator.generate(rgb, [r])]
    else:
        made = generator.generate(rgb, requests)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "calls": meter.calls("mllm"),
        "texts": [d.text for d in made],
        "tokens": sum(d.new_tokens for d in made),
    }


def bench_model(bundle: MllmBundle, label: str, n_expr: int, max_new_tokens: int, repeats: int) -> dict:
    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    requests = _requests(n_expr)
    settings = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=len(requests))
    _timed(bundle, rgb, requests[:2], settings, one_by_one=False)  # warm-up (lazy inits, allocator)
    rows: dict[str, Any] = {}
    runs: dict[str, list[dict]] = {"batched": [], "one_by_one": []}
    for _ in range(repeats):  # modes interleaved, so a change in machine load hits both alike
        for mode in runs:
            runs[mode].append(_timed(bundle, rgb, requests, settings, one_by_one=mode == "one_by_one"))
            print(f"  {label}: {mode} {runs[mode][-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    for mode in runs:
        best = min(runs[mode], key=lambda r: r["seconds"])
        rows[mode] = {
            "mllm_calls": best["calls"],
            "seconds": round(best["seconds"], 3),
            "seconds_per_sentence": round(best["seconds"] / n_expr, 3),
            "calls_per_sentence": round(best["calls"] / n_expr, 3),
            "generated_tokens": best["tokens"],
            "texts": best["texts"],
        }
    same = sum(a == b for a, b in zip(rows["batched"]["texts"], rows["one_by_one"]["texts"], strict=True))
    params = sum(p.numel() for p in bundle.model.parameters())
    return {
        "model": label,
        "parameters_m": round(params / 1e6, 1),
        "expressions": n_expr,
        "sequences": len(requests),
        "max_new_tokens": max_new_tokens,
        "batched": {k: v for k, v in rows["batched"].items() if k != "texts"},
        "one_by_one": {k: v for k, v in rows["one_by_one"].items() if k != "texts"},
        "speedup": round(rows["one_by_one"]["seconds"] / rows["batched"]["seconds"], 2),
        "same_text_batched_vs_single": f"{same}/{len(requests)}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,smolvlm", help="comma list of: tiny, smolvlm")
    parser.add_argument(
        "--expressions", type=int, default=4, help="expressions on the image (2 sequences each)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode; the fastest is reported")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            if name == "tiny":
                bundle, label = (
                    tiny_llava_bundle(Path(tmp) / "mllm_tiny"),
                    "mllm_tiny (LLaVA-1.5 layout, random)",
                )
            elif name == "smolvlm":
                bundle, label = build_idefics3_bundle("smolvlm_256m"), "SmolVLM-256M-shaped Idefics3 (random)"
            else:
                parser.error(f"unknown model {name!r}; use tiny or smolvlm")
            result = bench_model(bundle, label, args.expressions, args.max_new_tokens, args.repeats)
            results.append(result)
            print(json.dumps(result, indent=2), flush=True)
            del bundle
    report = {
        "command": " ".join(
            [".venv/bin/python scripts/bench_lgd.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
