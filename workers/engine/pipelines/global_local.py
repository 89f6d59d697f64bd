"""Global-Local CLIP (Yu et al., CVPR 2023) on SAM / MobileSAM proposals (METHODS.md, section 1).

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
- ``preprocessing="reference"`` (the default, with ``peer_compat``) reproduces the public code's image
  handling, quirks included; ``"clean"`` uses CLIP's own normalisation and aspect-preserving resizes.
- An image with no proposal returns an empty list; the benchmark counts such a sentence with IoU 0
  (the public code skips it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from workers.engine.clip_features import BACKGROUND_CHOICES, PREPROCESSING_CHOICES, VisualFeatureSettings
from workers.engine.errors import ConfigError
from workers.engine.masks import Proposals
from workers.engine.pipelines.base import ImageContext, Pipeline, PipelineConfig
from workers.engine.pipelines.registry import model_for_profile, register_pipeline
from workers.engine.pipelines.shared import (
    SAM_SOURCES,
    ExtractorPool,
    cached_proposals,
    cached_visual_features,
    filter_proposals,
    model_fingerprint,
    rank_candidates,
)
from workers.engine.proposals import AmgConfig
from workers.engine.text import parse_expression
from workers.engine.types import Candidate

#: The visual mix weight per dataset (the paper's values).
DATASET_V = {"refcoco": 0.95, "refcoco+": 0.95, "refcocog": 0.85}


@dataclass(frozen=True)
class GlobalLocalConfig(PipelineConfig):
    """Settings of Global-Local CLIP; defaults are the paper's / the public code's.

    Attributes:
        dataset: preset for ``v`` (``refcoco``, ``refcoco+``: 0.95; ``refcocog``: 0.85).
        v: explicit global weight in [0, 1]; ``None`` takes the dataset preset.
        r: noun-phrase weight of the text mix, in [0, 1].
        clip_model: store name of the CLIP model (ViT or RN50).
        proposal_source: store name of the SAM model proposing masks.
        amg: automatic-mask-generator settings (``AmgConfig`` keys; SAM's defaults).
        min_area, max_overlap, overlap_peer_compat, max_proposals: post-filters (METHODS.md); off by default.
        peer_compat: reproduce the public code (requires ``preprocessing="reference"`` and no antialias).
        preprocessing, mask_from_block, local_background, antialias, shorter_side: CLIP feature settings
            (``workers.engine.clip_features.VisualFeatureSettings``).
        normalize_before_mix: mix unit-normalised global and local features instead of raw ones.
        score_scale: the factor in front of the cosine (100).
        max_masks_per_forward, max_forward_mb: CLIP batch chunking.
    """

    dataset: str = "refcoco"
    v: float | None = None
    r: float = 0.5
    clip_model: str = "clip_vit_b_32"
    proposal_source: str = "sam_vit_h"
    amg: dict[str, Any] = field(default_factory=lambda: AmgConfig().to_dict())
    min_area: int = 0
    max_overlap: float | None = None
    overlap_peer_compat: bool = False
    max_proposals: int | None = None
    peer_compat: bool = True
    preprocessing: str = "reference"
    mask_from_block: int | None = None
    local_background: str = "mean"
    antialias: bool | None = None
    shorter_side: int = 800
    normalize_before_mix: bool = False
    score_scale: float = 100.0
    max_masks_per_forward: int = 32
    max_forward_mb: float | None = None

    def validate(self) -> None:
        self.check_choice("dataset", sorted(DATASET_V))
        if self.v is not None:
            self.check_range("v", 0.0, 1.0)
        self.check_range("r", 0.0, 1.0)
        self.check_choice("proposal_source", SAM_SOURCES)
        if not self.clip_model:
            raise ConfigError("config key 'clip_model' must name a CLIP model of the store")
        try:
            AmgConfig.from_dict(self.amg)
        except ConfigError as exc:
            raise ConfigError(f"config key 'amg': {exc}") from exc
        self.check_range("min_area", 0)
        if self.max_overlap is not None:
            self.check_range("max_overlap", 0.0, 1.0)
        if self.max_proposals is not None:
            self.check_range("max_proposals", 1)
        self.check_choice("preprocessing", PREPROCESSING_CHOICES)
        self.check_choice("local_background", BACKGROUND_CHOICES)
        if self.peer_compat and self.preprocessing != "reference":
            raise ConfigError("config key 'peer_compat' is true, which needs preprocessing 'reference'")
        if self.peer_compat and self.antialias:
            raise ConfigError(
                "config key 'peer_compat' is true, which needs antialias off (the public code's)"
            )
        if self.mask_from_block is not None:
            self.check_range("mask_from_block", 0)
        self.check_range("shorter_side", 16)
        self.check_range("score_scale", 0.0)
        self.check_range("max_masks_per_forward", 1)
        if self.max_forward_mb is not None:
            self.check_range("max_forward_mb", 1e-6)

    @property
    def resolved_v(self) -> float:
        return float(self.v) if self.v is not None else DATASET_V[self.dataset]

    @property
    def amg_config(self) -> AmgConfig:
        return AmgConfig.from_dict(self.amg)

    @property
    def feature_settings(self) -> VisualFeatureSettings:
        return VisualFeatureSettings(
            preprocessing=self.preprocessing,
            mask_from_block=self.mask_from_block,
            local_background=self.local_background,
            antialias=self.antialias,
            shorter_side=self.shorter_side,
            max_masks_per_forward=self.max_masks_per_forward,
            max_forward_mb=self.max_forward_mb,
        )


@register_pipeline("global_local")
class GlobalLocalPipeline(Pipeline):
    """Global-Local CLIP; see the module docstring."""

    config_class = GlobalLocalConfig
    config: GlobalLocalConfig

    def __init__(self, config: PipelineConfig, *, hub: Any, cache: Any, meter: Any) -> None:
        super().__init__(config, hub=hub, cache=cache, meter=meter)
        self._extractors = ExtractorPool(hub, meter)

    @classmethod
    def default_config(cls, profile: str = "paper") -> GlobalLocalConfig:
        base = GlobalLocalConfig()
        return GlobalLocalConfig.from_dict(
            {
                "clip_model": model_for_profile(base.clip_model, profile),
                "proposal_source": model_for_profile(base.proposal_source, profile),
            }
        )

    # -- image level --------------------------------------------------------------------------------
    def proposals(self, ctx: ImageContext) -> Proposals:
        """The image's filtered proposals (the generator runs once per image and setting)."""
        c = self.config
        raw = cached_proposals(ctx, self.hub, c.proposal_source, c.amg_config)
        return filter_proposals(
            raw,
            min_area=c.min_area,
            max_overlap=c.max_overlap,
            overlap_peer_compat=c.overlap_peer_compat,
            max_proposals=c.max_proposals,
        )

    def visual_features(self, ctx: ImageContext, proposals: Proposals) -> dict[str, torch.Tensor]:
        extractor = self._extractors.get(self.config.clip_model, self.config.feature_settings)
        fingerprint = model_fingerprint(self.hub, self.config.clip_model)
        return cached_visual_features(ctx, extractor, proposals, fingerprint)

    def prepare(self, ctx: ImageContext) -> None:
        proposals = self.proposals(ctx)
        if len(proposals):
            self.visual_features(ctx, proposals)

    # -- expression level ---------------------------------------------------------------------------
    def text_features(self, expressions: Sequence[str]) -> torch.Tensor:
        """``E x D`` text features (sentence / noun-phrase mix) of the expressions."""
        parsed = [parse_expression(e) for e in expressions]
        extractor = self._extractors.get(self.config.clip_model, self.config.feature_settings)
        with self.meter.stage("text"):
            return extractor.text_features(
                [p.normalized for p in parsed],
                [p.noun_phrase for p in parsed],
                sentence_weight=1.0 - self.config.r,
                phrase_weight=self.config.r,
            )

    def predict(self, ctx: ImageContext, expressions: Sequence[str]) -> list[list[Candidate]]:
        expressions = list(expressions)
        if not expressions:
            return []
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
