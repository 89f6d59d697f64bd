"""Grounded SAM 3: a multimodal LLM and SAM 3's noun-phrase segmentation (docs/METHODS.md#grounded-sam-3).

For each expression on an image:

1. *Noun phrase*: the MLLM shortens the expression to a noun phrase naming the object's kind
   (``noun_phrase="mllm"``; an unusable answer falls back to spaCy's noun phrase), or spaCy does
   (``"parser"``).
2. *Instances*: SAM 3 segments every instance of the phrase (``score > score_threshold``, the best
   ``max_instances``), masks as RLE at image size (:mod:`.segment`). When it finds none, the image's
   whole-image automatic proposals (``fallback_source``, ``amg``; the largest ``max_instances``) stand in.
3. *Selection*: with more than one instance (or ``select_single``) the MLLM sees the image with each
   instance's numbered box drawn on it (``draw_marks``) and the boxes listed, and answers which ones the
   expression means, best first, with a reason (:mod:`.prompts`). Its answer is parsed leniently: numbers
   out of range are dropped, a malformed answer keeps SAM 3's order, "none" keeps SAM 3's order too.

Ranking: the chosen instances in the MLLM's order, then the others by SAM 3 score. Each candidate's
``components``: ``sam3_score`` (SAM 3's score; the fallback proposal's predicted IoU), ``llm_rank`` (1-based
place in the MLLM's order, -1 when not chosen), ``llm_chosen`` (1 / 0), ``fallback`` (1 when the candidate is
a whole-image proposal), ``malformed`` (1 when the MLLM's answer could not be read), and ``score`` (chosen:
``1 + (number chosen - place)``; others: their SAM 3 score, so ``score`` orders the list). The MLLM's reason,
raw answer and noun phrase of every expression are reachable through :meth:`GroundedSam3Pipeline.explain`
(cached; no model call after ``predict``).

Cost per image: one MLLM call for the noun phrases of all its expressions (batched), one SAM 3 forward per
distinct phrase, one MLLM call for the selections of all expressions (batched). ``peer_compat`` is not
applicable (the SAM 3 agent's shape, not its code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.engine.blocks.masks import Proposals
from workers.engine.blocks.proposals.cached import cached_proposals, filter_proposals
from workers.engine.blocks.ranking import candidate_of
from workers.engine.blocks.text import parse_expression
from workers.engine.core.cache import ImageContext, cache_params
from workers.engine.core.types import Candidate
from workers.engine.methods.base import Pipeline
from workers.engine.methods.grounded_sam3.chat import MllmAsker, draw_marks
from workers.engine.methods.grounded_sam3.config import GroundedSam3Config
from workers.engine.methods.grounded_sam3.prompts import (
    PROMPT_VERSION,
    Selection,
    noun_phrase_prompt,
    parse_noun_phrase,
    parse_selection,
    selection_prompt,
)
from workers.engine.methods.grounded_sam3.segment import cached_instances


@dataclass(frozen=True)
class Grounding:
    """What the pipeline decided for one expression (see :meth:`GroundedSam3Pipeline.explain`)."""

    expression: str
    noun_phrase: str
    fallback: bool
    n_instances: int
    selection: Selection | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "expression": self.expression,
            "noun_phrase": self.noun_phrase,
            "fallback": self.fallback,
            "n_instances": self.n_instances,
            "selection": self.selection.to_state() if self.selection is not None else None,
        }


def rank_instances(instances: Proposals, selection: Selection | None, *, fallback: bool) -> list[Candidate]:
    """Candidates of ``instances``: the selection's order first, then the rest by score (see module doc)."""
    scores = np.nan_to_num(instances.predicted_iou, nan=0.0)
    chosen = list(selection.order) if selection is not None else []
    rest = [i for i in np.argsort(-scores, kind="stable").tolist() if i not in chosen]
    malformed = 1.0 if selection is not None and selection.malformed else 0.0
    out = []
    for rank, index in enumerate([*chosen, *rest]):
        place = chosen.index(index) if index in chosen else -1
        score = 1.0 + (len(chosen) - place) if place >= 0 else float(scores[index])
        components = {
            "sam3_score": float(scores[index]),
            "llm_rank": float(place + 1 if place >= 0 else -1),
            "llm_chosen": 1.0 if place >= 0 else 0.0,
            "fallback": 1.0 if fallback else 0.0,
            "malformed": malformed,
            "score": score,
        }
        out.append(candidate_of(instances, index, rank, score, components))
    return out


class GroundedSam3Pipeline(Pipeline):
    """Grounded SAM 3; see the module docstring."""

    config_class = GroundedSam3Config
    config: GroundedSam3Config

    def _asker(self) -> MllmAsker:
        c = self.config
        return self.hub.wrapper(
            c.mllm_model,
            "grounded_sam3_asker",
            lambda bundle: MllmAsker(bundle, c.mllm_model, c.max_new_tokens),
            key=str(c.max_new_tokens),
        )

    def _answers(self, ctx: ImageContext, kind: str, items: list[tuple[str, np.ndarray, str]]) -> list[str]:
        """MLLM answers of ``(cache id, image, question)`` items, cached per image; missing ones in one call."""
        c = self.config
        fingerprint = self.hub.fingerprint(c.mllm_model)
        keys = [
            ctx.key(
                f"grounded_sam3_{kind}",
                cache_params(
                    models={"mllm": fingerprint},
                    settings={"max_new_tokens": c.max_new_tokens},
                    prompt_version=PROMPT_VERSION,
                    item=item_id,
                    question=question,
                ),
            )
            for item_id, _, question in items
        ]
        found = {k: ctx.cache.get(k) for k in keys}
        missing = [(k, item) for k, item in zip(keys, items, strict=True) if found[k] is None]
        missing = list({k: item for k, item in missing}.items())
        if missing:
            answers = self._asker().ask(
                [image for _, (_, image, _) in missing], [q for _, (_, _, q) in missing], stage=f"mllm_{kind}"
            )
            for (key, _), answer in zip(missing, answers, strict=True):
                ctx.cache.put(key, {"answer": answer})
                found[key] = {"answer": answer}
        return [str(found[k]["answer"]) for k in keys]

    def noun_phrases(self, ctx: ImageContext, expressions: list[str]) -> list[str]:
        """The noun phrase SAM 3 is given for each expression."""
        parsed = [parse_expression(e).noun_phrase or parse_expression(e).normalized for e in expressions]
        if self.config.noun_phrase == "parser":
            return parsed
        questions = [noun_phrase_prompt(e) for e in expressions]
        answers = self._answers(ctx, "phrase", [("image", ctx.rgb, q) for q in questions])
        return [parse_noun_phrase(a) or p for a, p in zip(answers, parsed, strict=True)]

    def instances(self, ctx: ImageContext, phrase: str) -> tuple[Proposals, bool]:
        """``(instances, fallback)``: SAM 3's instances of ``phrase``, or the whole-image proposals."""
        c = self.config
        found = cached_instances(
            ctx,
            self.hub,
            c.sam3_model,
            phrase,
            score_threshold=c.score_threshold,
            mask_threshold=c.mask_threshold,
            max_instances=c.max_instances,
        )
        if len(found):
            return found, False
        whole = cached_proposals(ctx, self.hub, c.fallback_source, c.amg)
        return filter_proposals(whole, max_proposals=c.max_instances), True

    def ground(self, ctx: ImageContext, expressions: list[str]) -> list[tuple[Grounding, Proposals]]:
        """Every expression's noun phrase, instances and the MLLM's selection."""
        c = self.config
        phrases = self.noun_phrases(ctx, expressions)
        found = {p: self.instances(ctx, p) for p in dict.fromkeys(phrases)}
        asks: list[tuple[int, str, np.ndarray, str]] = []
        for e, (expression, phrase) in enumerate(zip(expressions, phrases, strict=True)):
            instances, _ = found[phrase]
            if len(instances) > 1 or (len(instances) == 1 and c.select_single):
                image = draw_marks(ctx.rgb, instances.bbox_xyxy) if c.draw_marks else ctx.rgb
                question = selection_prompt(expression, instances.bbox_xyxy.tolist(), ctx.size)
                asks.append((e, instances.digest() + ("+marks" if c.draw_marks else ""), image, question))
        answers = self._answers(ctx, "selection", [(i, img, q) for _, i, img, q in asks])
        selections = {
            e: parse_selection(a, len(found[phrases[e]][0])) for (e, *_), a in zip(asks, answers, strict=True)
        }
        out = []
        for e, (expression, phrase) in enumerate(zip(expressions, phrases, strict=True)):
            instances, fallback = found[phrase]
            grounding = Grounding(expression, phrase, fallback, len(instances), selections.get(e))
            out.append((grounding, instances))
        return out

    def explain(self, ctx: ImageContext, expressions: list[str]) -> list[Grounding]:
        """What was decided for each expression: noun phrase, fallback, the MLLM's order, reason and answer."""
        return [g for g, _ in self.ground(ctx, list(expressions))]

    def _predict(self, ctx: ImageContext, expressions: list[str]) -> list[list[Candidate]]:
        for expression in expressions:  # refuse an empty expression before any model work
            parse_expression(expression)
        results = []
        for grounding, instances in self.ground(ctx, expressions):
            results.append(rank_instances(instances, grounding.selection, fallback=grounding.fallback))
        return results
