"""LGD: Leveraging Generative Descriptions (Li et al., Pattern Recognition 2025; docs/METHODS.md#lgd).

A multimodal LLM writes two descriptions of the referent from the image and the expression
(:mod:`workers.engine.methods.lgd.descriptions`): an attribute description ``T_att`` and a surrounding description
``T_sur``. Each proposal i is then scored with three CLIP region-text scores on the same per-mask visual
feature ``visual_i`` (Global-Local CLIP's ``v * global_i + (1 - v) * local_i``, read from the per-image cache):

    S_van_i = the Global-Local CLIP score of the expression (sentence / noun-phrase text mix)
    S_att_i = scale * cosine(visual_i, f(T_att))
    S_sur_i = scale * cosine(visual_i, f(T_sur))
    S_i     = use_van * S_van_i + use_att * alpha * S_att_i + use_sur * beta * S_sur_i

and the proposals are ranked by ``S``. Each candidate's ``components`` holds ``s_van``, ``s_att`` (when
``use_att``), ``s_sur`` (when ``use_sur``) and ``score`` (= S).

Shape: the config extends :class:`GlobalLocalConfig`, and the pipeline extends the Global-Local pipeline, so
the vanilla term is exactly the ``global_local`` score under the same keys (``alpha = beta = 0`` ranks as
``global_local`` does, to the bit), and the proposals and per-mask features of an image are shared with it
through the per-image cache.

Defaults (the paper publishes neither its MLLM, its prompts nor its alpha / beta; it sweeps alpha and beta
in its figures 3-5):

- ``mllm_model = "llava_1_5_7b"`` (paper scale); ``"smolvlm_256m"`` is the laptop model. The tiny profile maps
  both to ``mllm_tiny``.
- ``alpha = 1.0``: the attribute description talks about the referent itself, as the expression does, so it
  gets the expression's weight.
- ``beta = 0.5``: the surrounding description is mostly about *other* objects; a referent mask matches it
  only through context (the global-context half of its feature), so it gets half weight, and it can
  never outvote the two terms about the referent.
  Both are guesses to be tuned by a sweep on a validation split (``manage.py benchmark --config lgd.alpha=..``).
- ``generation.max_new_tokens = 48``: the descriptions are one short sentence, and CLIP reads at most 77 tokens.
- ``generation.prefill_response = true``: every description starts with "A photo of" (the paper's shape).

Ablations (the paper's table shape): ``use_van``, ``use_att``, ``use_sur``. A term that is off costs nothing:
``use_att = false`` generates no attribute description (and ``use_att = use_sur = false`` no MLLM call at all).
A weight of 0 with the term on still generates and reports its score, so ``s_att`` can be inspected.

The descriptions themselves are reachable through :meth:`LgdPipeline.descriptions` (the candidates'
components are floats only); after :meth:`predict` it is a cache hit and makes no MLLM call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from workers.engine.blocks.masks import Proposals
from workers.engine.blocks.ranking import rank_candidates
from workers.engine.blocks.text import parse_expression
from workers.engine.core.cache import ImageContext
from workers.engine.core.config import config_hash
from workers.engine.core.types import Candidate
from workers.engine.methods.global_local.pipeline import GlobalLocalPipeline
from workers.engine.methods.lgd.config import LgdConfig
from workers.engine.methods.lgd.descriptions import (
    DescriptionGenerator,
    DescriptionRequest,
    GeneratedDescription,
    cached_descriptions,
)


@dataclass(frozen=True)
class Descriptions:
    """The two descriptions of one expression on one image (``None`` for a kind that was switched off)."""

    expression: str
    attribute: str | None
    surrounding: str | None

    def to_dict(self) -> dict[str, str | None]:
        return {"expression": self.expression, "attribute": self.attribute, "surrounding": self.surrounding}


class LgdPipeline(GlobalLocalPipeline):
    """LGD; see the module docstring."""

    config_class = LgdConfig
    config: LgdConfig

    # -- descriptions -------------------------------------------------------------------------------
    def _generator(self) -> DescriptionGenerator:
        """The hub's description generator for this config's MLLM, prompts and decoding settings."""
        c = self.config
        key = {"prompts": c.prompt_set, "version": c.prompts.version, "generation": c.generation.to_dict()}
        return self.hub.wrapper(
            c.mllm_model,
            "lgd_descriptions",
            lambda bundle: DescriptionGenerator(bundle, c.mllm_model, c.prompts, c.generation),
            key=config_hash(key),
        )

    def _generated(
        self, ctx: ImageContext, expressions: Sequence[str]
    ) -> dict[tuple[str, str], GeneratedDescription]:
        """Every active kind's description of every expression, keyed by (expression, kind)."""
        kinds = self.config.active_kinds
        if not kinds or not expressions:
            return {}
        requests = []
        for expression in dict.fromkeys(expressions):
            parsed = parse_expression(expression)
            text = " ".join(expression.split())
            requests.extend(DescriptionRequest(text, parsed.noun_phrase, kind) for kind in kinds)
        made = cached_descriptions(
            ctx,
            requests,
            generator=self._generator,
            model_fingerprint=self.hub.fingerprint(self.config.mllm_model),
            prompts=self.config.prompts,
            settings=self.config.generation,
        )
        return {(" ".join(r.expression.split()), r.kind): d for r, d in zip(requests, made, strict=True)}

    def descriptions(self, ctx: ImageContext, expressions: Sequence[str]) -> list[Descriptions]:
        """``T_att`` / ``T_sur`` of each expression on ``ctx``'s image (cached; generated when missing)."""
        expressions = list(expressions)
        generated = self._generated(ctx, expressions)

        def text(expression: str, kind: str) -> str | None:
            found = generated.get((" ".join(expression.split()), kind))
            return found.text if found is not None else None

        return [Descriptions(e, text(e, "attribute"), text(e, "surrounding")) for e in expressions]

    # -- scoring ------------------------------------------------------------------------------------
    def score(
        self,
        ctx: ImageContext,
        expressions: list[str],
        proposals: Proposals,
        features: dict[str, torch.Tensor],
        text: torch.Tensor,
    ) -> list[list[Candidate]]:
        """S = S_van + alpha * S_att + beta * S_sur over the shared Global-Local image work."""
        described = self.descriptions(ctx, expressions)
        extractor = self.extractor()
        with self.meter.stage("text"):
            att = self._description_features(extractor, [d.attribute for d in described])
            sur = self._description_features(extractor, [d.surrounding for d in described])
        with self.meter.stage("scoring"):
            return self._rank_lgd(proposals, features, text, att, sur)

    @staticmethod
    def _description_features(extractor: Any, texts: list[str | None]) -> torch.Tensor | None:
        if any(t is None for t in texts):
            return None
        return extractor.encode_texts(texts)

    def _rank_lgd(
        self,
        proposals: Proposals,
        features: dict[str, torch.Tensor],
        text: torch.Tensor,
        att: torch.Tensor | None,
        sur: torch.Tensor | None,
    ) -> list[list[Candidate]]:
        c = self.config
        visual = F.normalize(self.mixed_visual(features), dim=-1)

        def cosine(t: torch.Tensor) -> np.ndarray:  # E x D texts -> E x N scores
            return (c.score_scale * F.normalize(t.float(), dim=-1) @ visual.T).numpy()

        s_van = cosine(text)
        s_att = cosine(att) if att is not None else None
        s_sur = cosine(sur) if sur is not None else None
        results = []
        for e in range(s_van.shape[0]):
            total = np.zeros(len(proposals), dtype=np.float64)
            components: dict[str, np.ndarray] = {"s_van": s_van[e]}
            if c.use_van:
                total = total + s_van[e].astype(np.float64)
            if s_att is not None:
                components["s_att"] = s_att[e]
                total = total + c.alpha * s_att[e].astype(np.float64)
            if s_sur is not None:
                components["s_sur"] = s_sur[e]
                total = total + c.beta * s_sur[e].astype(np.float64)
            components["score"] = total
            results.append(rank_candidates(proposals, total, components))
        return results
