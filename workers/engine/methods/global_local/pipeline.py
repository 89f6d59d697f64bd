"""Global-Local CLIP (Yu et al., CVPR 2023) on SAM / MobileSAM proposals (docs/METHODS.md#global-local-clip).

For each proposal i of an image, with CLIP text feature ``t`` of an expression:

    visual_i = v * global_i + (1 - v) * local_i          (v = 0.95 RefCOCO/RefCOCO+, 0.85 RefCOCOg)
    t        = (1 - r) * f(sentence) + r * f(noun phrase)   (r = 0.5)
    score_i  = 100 * cosine(visual_i, t)

The mixes are on unnormalised features, as in the public code (``normalize_before_mix`` switches to
mixing unit vectors). Each candidate's ``components`` holds ``s_global`` and ``s_local`` (100 * cosine of
each part alone) and ``score``; note ``score`` is the cosine of the mix, not a mix of the two cosines.

Image-level work (proposals, both visual features of every mask) is cached per image; an expression
costs one parse and one text forward (``predict`` encodes all its expressions' texts in one batch).

Differences from the public code, each a switch:

- Proposals come from SAM's automatic mask generator (``proposal_source``), not FreeSOLO.
- ``features.preprocessing="reference"`` (the default, with ``peer_compat``) reproduces the public code's image
  handling, quirks included; ``"clean"`` uses CLIP's own normalisation and aspect-preserving resizes.
- An image with no proposal returns an empty list; the benchmark counts such a sentence with IoU 0
  (the public code skips it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from workers.engine.blocks.clip.features import ClipFeatureExtractor, cached_visual_features, clip_extractor
from workers.engine.blocks.masks import Proposals
from workers.engine.blocks.proposals.cached import cached_proposals, filter_proposals
from workers.engine.blocks.ranking import rank_candidates
from workers.engine.blocks.text import parse_expression
from workers.engine.core.cache import ImageContext
from workers.engine.core.types import Candidate
from workers.engine.methods.base import Pipeline
from workers.engine.methods.global_local.config import GlobalLocalConfig


class GlobalLocalPipeline(Pipeline):
    """Global-Local CLIP; see the module docstring."""

    config_class = GlobalLocalConfig
    config: GlobalLocalConfig

    # -- image level --------------------------------------------------------------------------------
    def proposals(self, ctx: ImageContext) -> Proposals:
        """The image's filtered proposals (the generator runs once per image and setting)."""
        c = self.config
        raw = cached_proposals(ctx, self.hub, c.proposal_source, c.amg)
        return filter_proposals(
            raw,
            min_area=c.min_area,
            max_overlap=c.max_overlap,
            overlap_peer_compat=c.overlap_peer_compat,
            max_proposals=c.max_proposals,
        )

    def extractor(self) -> ClipFeatureExtractor:
        """The hub's CLIP feature extractor for this config's model and feature settings."""
        return clip_extractor(self.hub, self.config.clip_model, self.config.features)

    def visual_features(self, ctx: ImageContext, proposals: Proposals) -> dict[str, torch.Tensor]:
        """``{"global": N x D, "local": N x D}`` features of ``proposals`` (cached per image)."""
        fingerprint = self.hub.fingerprint(self.config.clip_model)
        return cached_visual_features(ctx, self.extractor(), proposals, fingerprint)

    def _prepare(self, ctx: ImageContext) -> None:
        proposals = self.proposals(ctx)
        if len(proposals):
            self.visual_features(ctx, proposals)

    # -- expression level ---------------------------------------------------------------------------
    def text_features(self, expressions: Sequence[str]) -> torch.Tensor:
        """``E x D`` text features (sentence / noun-phrase mix) of the expressions."""
        parsed = [parse_expression(e) for e in expressions]
        with self.meter.stage("text"):
            return self.extractor().text_features(
                [p.normalized for p in parsed],
                [p.noun_phrase for p in parsed],
                sentence_weight=1.0 - self.config.r,
                phrase_weight=self.config.r,
            )

    def _predict(self, ctx: ImageContext, expressions: list[str]) -> list[list[Candidate]]:
        for expression in expressions:  # refuse an empty expression before any model work
            parse_expression(expression)
        proposals = self.proposals(ctx)
        if len(proposals) == 0:
            return [[] for _ in expressions]
        features = self.visual_features(ctx, proposals)
        text = self.text_features(expressions)
        return self.score(ctx, expressions, proposals, features, text)

    def score(
        self,
        ctx: ImageContext,
        expressions: list[str],
        proposals: Proposals,
        features: dict[str, torch.Tensor],
        text: torch.Tensor,
    ) -> list[list[Candidate]]:
        """Rank ``proposals`` for each expression from the shared image work (subclasses add terms).

        ``features`` holds ``N x D`` ``global`` and ``local`` visual features; ``text`` is ``E x D``.
        """
        with self.meter.stage("scoring"):
            return self._rank(proposals, features, text)

    def mixed_visual(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """``N x D`` per-mask visual features, ``v * global + (1 - v) * local`` (unnormalised)."""
        c = self.config
        v = c.resolved_v
        global_f, local_f = features["global"].float(), features["local"].float()
        if c.normalize_before_mix:
            global_f, local_f = F.normalize(global_f, dim=-1), F.normalize(local_f, dim=-1)
        return v * global_f + (1.0 - v) * local_f

    def _rank(
        self, proposals: Proposals, features: dict[str, torch.Tensor], text: torch.Tensor
    ) -> list[list[Candidate]]:
        c = self.config
        mixed = self.mixed_visual(features)
        global_f, local_f = features["global"].float(), features["local"].float()
        t = F.normalize(text.float(), dim=-1)

        def cosine(visual: torch.Tensor) -> np.ndarray:
            return (c.score_scale * t @ F.normalize(visual, dim=-1).T).numpy()  # E x N

        score, s_global, s_local = cosine(mixed), cosine(global_f), cosine(local_f)
        return [
            rank_candidates(
                proposals, score[e], {"s_global": s_global[e], "s_local": s_local[e], "score": score[e]}
            )
            for e in range(score.shape[0])
        ]
