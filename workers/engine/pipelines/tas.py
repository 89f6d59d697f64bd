"""TAS: text-augmented, spatial-aware zero-shot referring segmentation (Suo et al., 2023; METHODS.md, section 2).

For the N proposals of an image and an expression (lower-cased sentence ``t``), with ``s = score_scale``:

    S_v[i] = s * cos(CLIP_image(crop_i), CLIP_text(t))          crop: mask on black, padded square
    P[i]   = s * cos(CLIP_text(caption_i), CLIP_text(t))        caption of the blurred-background crop
    N[i]   = s * mean_j cos(CLIP_image(crop_i), CLIP_text("a photo of {chunk_j}"))
    raw    = S_v + lambda_p * P - lambda_n * N                   (0.1 and 0.7, the code's constants)
    score  = softmax(minmax(raw))                                over the N masks

The chunks are the noun chunks of one caption of the whole image minus those whose noun is a
near-synonym of the target noun (``workers.engine.lexicon``). The best score's mask is then re-selected by
the spatial rectifier (``workers.engine.spatial``) when the sentence names a side. Proposals: SAM's
automatic generator with TAS's settings (8 points per side, thresholds 0.7, regions under 800 px cleaned),
masks under 2000 px dropped, and of two masks overlapping by more than 0.4 of the smaller, the smaller.

Cost: proposals, the crops' CLIP features, every mask caption and the image caption depend only on the
image and are cached per image (``ImageContext``), so all expressions on an image share them; captions are
generated in batches. An expression costs one parse and text features (cached per text).

Candidates carry ``components``: ``s_v``, ``p``, ``n``, ``raw``, ``score`` (the softmax probability, also the
candidate's score), ``rectifier_fired`` (1 when the sentence named a side and the rectifier ran, on every
candidate of that expression) and ``rectifier_pick`` (1 on the mask it chose). The rectifier's pick is
ranked first, the others follow by score.

``peer_compat`` reproduces the public code; each difference also has its own key (``None`` = follow
``peer_compat``):

- ``overlap_peer_compat``: the code's overlap filter is not greedy (a dropped mask still drops others).
- ``spatial_match``: ``"substring"`` (code: "bright" fires right, "feast" east) or ``"word"``; and
  ``spatial_vocabulary`` ``None`` takes the code's word lists (no "bottom") or ours.
- ``rectifier_skip_punctuated``: the code's rectifier never fires on a sentence ending in punctuation.
- ``synonym_noun``: ``"first"`` noun of each phrase (code, there by nltk's tagger, here spaCy's) or its
  ``"head"`` noun; ``synonym_same_lemma``: equal lemmas are near-synonyms (ours; the code needs 3 shared
  senses, so a noun with fewer senses is not its own near-synonym); ``synonym_nouns_only``: noun senses
  only (ours) or every part of speech (code).
- ``nan_guard``: an empty negative list gives N = 0 and equal raw scores give equal weights (ours); the
  code divides by zero, every score becomes NaN and, as ``torch.argmax`` does, the first mask wins. NaN
  values are reported as 0 with a ``nan`` component of 1, so candidates stay valid JSON.

Not reproduced in any mode (no effect on which mask wins, or not reproducible here): the code recomputes SAM
and captions per ref; its image captions come from files that were never published (ours: one caption per
image by the configured captioner); its crops use SAM's ``xywh`` box, one pixel short on the right and
bottom, and pad by ``(h - w) // 2`` per side; its rectifier is gated by an entity parse with spaCy's
transformer model (see ``workers.engine.spatial``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from workers.engine.captions import Captioner, CaptionSettings, cached_image_caption, cached_mask_captions
from workers.engine.clip_features import VisualFeatureSettings
from workers.engine.errors import ConfigError
from workers.engine.lexicon import SynonymRule, WordNetMissingError, load_wordnet, near_synonyms, phrase_noun
from workers.engine.masks import Proposals
from workers.engine.pipelines.base import ImageContext, Pipeline, PipelineConfig
from workers.engine.pipelines.registry import model_for_profile, register_pipeline
from workers.engine.pipelines.shared import (
    SAM_SOURCES,
    ExtractorPool,
    cached_proposals,
    filter_proposals,
    model_fingerprint,
    proposals_digest,
)
from workers.engine.proposals import AmgConfig
from workers.engine.proposals.amg import TAS_AMG_CONFIG
from workers.engine.spatial import (
    DEFAULT_VOCABULARY,
    MATCH_CHOICES,
    TAS_CODE_VOCABULARY,
    check_vocabulary,
    find_directions,
    mask_centroids,
    rectify,
)
from workers.engine.text import get_nlp, parse_expression
from workers.engine.types import Candidate

log = logging.getLogger(__name__)

NORMALIZATION_CHOICES = ("minmax", "none")
LEXICON_FALLBACK_CHOICES = ("error", "exact")
SYNONYM_NOUN_CHOICES = ("head", "first")


@dataclass(frozen=True)
class TasConfig(PipelineConfig):
    """Settings of TAS; defaults are the public code's constants with its plain bugs fixed.

    Attributes:
        clip_model, captioner_model, proposal_source: store names of the CLIP model, the image-to-text
            captioner and the SAM model.
        amg: automatic-mask-generator settings (TAS: 8 points per side, thresholds 0.7, min region 800).
        min_area: masks under this many pixels are dropped (2000).
        max_overlap: of two masks overlapping by more than this fraction of the smaller, the smaller is
            dropped (0.4); ``None`` keeps both.
        max_proposals: keep at most this many largest masks (``None``: all).
        lambda_p, lambda_n: weights of P and N in ``S_v + lambda_p * P - lambda_n * N`` (0.1, 0.7).
        score_scale: factor of every cosine (CLIP's logit scale, 100).
        normalization: ``"minmax"`` (the code) or ``"none"`` before the softmax.
        softmax: turn the normalised scores into probabilities over the masks.
        negative_template: the prompt of a negative phrase (``"a photo of {}"``).
        synonym_min_shared_senses, synonym_min_path_similarity: WordNet near-synonym rule (3, 0.9).
        lexicon_fallback: without WordNet, ``"error"`` (raise, naming the fix) or ``"exact"`` (compare
            lemmas only, with a warning).
        rectifier: run the spatial rectifier.
        spatial_vocabulary: direction -> words; ``None`` takes the code's lists in peer_compat, ours otherwise.
        caption_*: generation settings (LAVIS's BLIP-2 defaults), see ``workers.engine.captions``.
        blur_kernel: Gaussian kernel of the captioner's blurred background (75).
        max_masks_per_forward: CLIP batch size.
        peer_compat and the keys after it: see the module docstring.
    """

    clip_model: str = "clip_vit_b_32"
    captioner_model: str = "blip2_opt_2_7b"
    proposal_source: str = "sam_vit_h"
    amg: dict[str, Any] = field(default_factory=lambda: TAS_AMG_CONFIG.to_dict())
    min_area: int = 2000
    max_overlap: float | None = 0.4
    max_proposals: int | None = None
    lambda_p: float = 0.1
    lambda_n: float = 0.7
    score_scale: float = 100.0
    normalization: str = "minmax"
    softmax: bool = True
    negative_template: str = "a photo of {}"
    synonym_min_shared_senses: int = 3
    synonym_min_path_similarity: float = 0.9
    lexicon_fallback: str = "error"
    rectifier: bool = True
    spatial_vocabulary: dict[str, Any] | None = None
    caption_max_new_tokens: int = 30
    caption_min_new_tokens: int = 1
    caption_num_beams: int = 5
    caption_prompt: str = ""
    caption_batch_size: int = 16
    blur_kernel: int = 75
    max_masks_per_forward: int = 32
    peer_compat: bool = False
    overlap_peer_compat: bool | None = None
    spatial_match: str | None = None
    rectifier_skip_punctuated: bool | None = None
    synonym_noun: str | None = None
    synonym_same_lemma: bool | None = None
    synonym_nouns_only: bool | None = None
    nan_guard: bool | None = None

    def validate(self) -> None:
        for key in ("clip_model", "captioner_model"):
            if not getattr(self, key):
                raise ConfigError(f"config key {key!r} must name a model of the store")
        self.check_choice("proposal_source", SAM_SOURCES)
        try:
            AmgConfig.from_dict(self.amg)
        except ConfigError as exc:
            raise ConfigError(f"config key 'amg': {exc}") from exc
        self.check_range("min_area", 0)
        if self.max_overlap is not None:
            self.check_range("max_overlap", 0.0, 1.0)
        if self.max_proposals is not None:
            self.check_range("max_proposals", 1)
        self.check_range("lambda_p", 0.0)
        self.check_range("lambda_n", 0.0)
        self.check_range("score_scale", 1e-9)
        self.check_choice("normalization", NORMALIZATION_CHOICES)
        if self.negative_template.count("{}") != 1:
            raise ConfigError(
                f"config key 'negative_template' must hold '{{}}' once (where the phrase goes), "
                f"got {self.negative_template!r}"
            )
        self.check_range("synonym_min_shared_senses", 1)
        self.check_range("synonym_min_path_similarity", 0.0, 1.0)
        self.check_choice("lexicon_fallback", LEXICON_FALLBACK_CHOICES)
        if self.spatial_vocabulary is not None:
            try:
                check_vocabulary(self.spatial_vocabulary)
            except ValueError as exc:
                raise ConfigError(f"config key 'spatial_vocabulary': {exc}") from exc
        self.check_range("caption_max_new_tokens", 1)
        self.check_range("caption_min_new_tokens", 0, self.caption_max_new_tokens)
        self.check_range("caption_num_beams", 1)
        self.check_range("caption_batch_size", 1)
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ConfigError(
                f"config key 'blur_kernel' must be an odd positive number, got {self.blur_kernel}"
            )
        self.check_range("max_masks_per_forward", 1)
        if self.spatial_match is not None:
            self.check_choice("spatial_match", MATCH_CHOICES)
        if self.synonym_noun is not None:
            self.check_choice("synonym_noun", SYNONYM_NOUN_CHOICES)

    # -- the settings each mode resolves to ----------------------------------------------------------
    def _pick(self, key: str, ours: Any, code: Any) -> Any:
        value = getattr(self, key)
        if value is not None:
            return value
        return code if self.peer_compat else ours

    @property
    def resolved_overlap_peer_compat(self) -> bool:
        return bool(self._pick("overlap_peer_compat", False, True))

    @property
    def resolved_spatial_match(self) -> str:
        return str(self._pick("spatial_match", "word", "substring"))

    @property
    def resolved_vocabulary(self) -> dict[str, tuple[str, ...]]:
        if self.spatial_vocabulary is not None:
            return check_vocabulary(self.spatial_vocabulary)
        return dict(TAS_CODE_VOCABULARY if self.peer_compat else DEFAULT_VOCABULARY)

    @property
    def resolved_skip_punctuated(self) -> bool:
        return bool(self._pick("rectifier_skip_punctuated", False, True))

    @property
    def resolved_synonym_noun(self) -> str:
        return str(self._pick("synonym_noun", "head", "first"))

    @property
    def resolved_nan_guard(self) -> bool:
        return bool(self._pick("nan_guard", True, False))

    @property
    def synonym_rule(self) -> SynonymRule:
        return SynonymRule(
            min_shared_senses=self.synonym_min_shared_senses,
            min_path_similarity=self.synonym_min_path_similarity,
            same_lemma=bool(self._pick("synonym_same_lemma", True, False)),
            nouns_only=bool(self._pick("synonym_nouns_only", True, False)),
        )

    @property
    def amg_config(self) -> AmgConfig:
        return AmgConfig.from_dict(self.amg)

    @property
    def caption_settings(self) -> CaptionSettings:
        return CaptionSettings(
            max_new_tokens=self.caption_max_new_tokens,
            min_new_tokens=self.caption_min_new_tokens,
            num_beams=self.caption_num_beams,
            prompt=self.caption_prompt,
            batch_size=self.caption_batch_size,
            blur_kernel=self.blur_kernel,
        )

    @property
    def crop_settings(self) -> VisualFeatureSettings:
        """CLIP crop features as TAS: the mask on black, cut to its box, padded square, CLIP's normalisation."""
        return VisualFeatureSettings(
            preprocessing="clean", local_background="black", max_masks_per_forward=self.max_masks_per_forward
        )


# ---------------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------------


def combine_scores(
    s_v: np.ndarray,
    p: np.ndarray,
    n: np.ndarray,
    *,
    lambda_p: float,
    lambda_n: float,
    normalization: str = "minmax",
    softmax: bool = True,
    nan_guard: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(raw, score)`` of N masks: ``raw = s_v + lambda_p * p - lambda_n * n``, then min-max and softmax.

    With ``nan_guard``, equal raw scores normalise to zeros (equal weights); without it they divide by
    zero as in the public code (NaN).
    """
    raw = (
        np.asarray(s_v, np.float64)
        + lambda_p * np.asarray(p, np.float64)
        - lambda_n * np.asarray(n, np.float64)
    )
    values = raw
    if normalization == "minmax" and raw.size:
        low, high = np.min(raw), np.max(raw)
        spread = high - low
        if nan_guard and not spread > 0:
            values = np.zeros_like(raw)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                values = (raw - low) / spread
    if softmax and values.size:
        shifted = values - np.max(values)
        exp = np.exp(shifted)
        values = exp / exp.sum()
    return raw, values


@dataclass(frozen=True)
class NegativePhrases:
    """The negative phrases of one expression.

    Attributes:
        chunks: caption noun chunks kept as negatives.
        excluded: chunks dropped as near-synonyms of the target.
        target: the target noun (``None`` when the noun phrase has none).
    """

    chunks: tuple[str, ...]
    excluded: tuple[str, ...]
    target: str | None


def negative_phrases(
    caption: str, noun_phrase: str, *, rule: SynonymRule, noun: str = "head", wordnet: Any | None = None
) -> NegativePhrases:
    """Noun chunks of ``caption`` whose noun is not a near-synonym of ``noun_phrase``'s noun.

    Args:
        caption: the image-level caption.
        noun_phrase: the expression's target noun phrase.
        rule: the near-synonym rule (``workers.engine.lexicon.SynonymRule``).
        noun: ``"head"`` or ``"first"`` (which noun of each phrase is compared).
        wordnet: an nltk WordNet reader, or ``None`` with ``rule.use_wordnet`` false.
    """
    nlp = get_nlp()
    first = noun == "first"
    target = phrase_noun(nlp(noun_phrase), first=first) if noun_phrase.strip() else None
    kept, excluded = [], []
    for chunk in nlp(caption).noun_chunks if caption.strip() else ():
        text = chunk.text.strip()
        if not text:
            continue
        if near_synonyms(phrase_noun(chunk, first=first), target, rule, wordnet):
            excluded.append(text)
        else:
            kept.append(text)
    return NegativePhrases(tuple(kept), tuple(excluded), target.text if target else None)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


# ---------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------


@register_pipeline("tas")
class TasPipeline(Pipeline):
    """TAS; see the module docstring."""

    config_class = TasConfig
    config: TasConfig

    def __init__(self, config: PipelineConfig, *, hub: Any, cache: Any, meter: Any) -> None:
        super().__init__(config, hub=hub, cache=cache, meter=meter)
        self._extractors = ExtractorPool(hub, meter)
        self._captioners: dict[int, Captioner] = {}
        self._warned_fallback = False

    @classmethod
    def default_config(cls, profile: str = "paper") -> TasConfig:
        base = TasConfig()
        return TasConfig.from_dict(
            {
                "clip_model": model_for_profile(base.clip_model, profile),
                "captioner_model": model_for_profile(base.captioner_model, profile),
                "proposal_source": model_for_profile(base.proposal_source, profile),
            }
        )

    # -- models ----------------------------------------------------------------------------------------
    def extractor(self) -> Any:
        return self._extractors.get(self.config.clip_model, self.config.crop_settings)

    def captioner(self) -> Captioner:
        bundle = self.hub.get(self.config.captioner_model)
        captioner = self._captioners.get(id(bundle))
        if captioner is None:
            captioner = Captioner(
                bundle,
                model_name=self.config.captioner_model,
                settings=self.config.caption_settings,
                meter=self.meter,
            )
            self._captioners = {id(bundle): captioner}  # a reloaded bundle replaces the old one
        return captioner

    def _wordnet(self) -> tuple[Any | None, SynonymRule]:
        rule = self.config.synonym_rule
        try:
            return load_wordnet(), rule
        except WordNetMissingError:
            if self.config.lexicon_fallback == "error":
                raise
            if not self._warned_fallback:
                log.warning("WordNet is not installed: TAS compares negative phrases by lemma only")
                self._warned_fallback = True
            return None, replace(rule, use_wordnet=False)

    # -- image level -----------------------------------------------------------------------------------
    def proposals(self, ctx: ImageContext) -> Proposals:
        """The image's proposals after TAS's filters (the generator runs once per image and setting)."""
        c = self.config
        raw = cached_proposals(ctx, self.hub, c.proposal_source, c.amg_config)
        return filter_proposals(
            raw,
            min_area=c.min_area,
            max_overlap=c.max_overlap,
            overlap_peer_compat=c.resolved_overlap_peer_compat,
            max_proposals=c.max_proposals,
        )

    def crop_features(self, ctx: ImageContext, proposals: Proposals) -> torch.Tensor:
        """``N x D`` float32 CLIP features of the masks' black-background crops, once per image."""
        extractor = self.extractor()
        params = {
            "extractor": extractor.describe(),
            "model": model_fingerprint(self.hub, self.config.clip_model),
            "masks": proposals_digest(proposals),
        }

        def compute() -> dict[str, torch.Tensor]:
            with ctx.meter.stage("clip_visual"):
                prepared = extractor.prepare_image(ctx.rgb)
                return {"crops": extractor.local_features(prepared, proposals.to_tensor())}

        return ctx.cached("tas_crop_clip", params, compute)["crops"]

    def mask_captions(self, ctx: ImageContext, proposals: Proposals) -> list[str]:
        """One caption per mask (blurred-background crop), once per image."""
        fingerprint = model_fingerprint(self.hub, self.config.captioner_model)
        return cached_mask_captions(ctx, self.captioner(), proposals, fingerprint)

    def image_caption(self, ctx: ImageContext) -> str:
        """The caption of the whole image, once per image."""
        fingerprint = model_fingerprint(self.hub, self.config.captioner_model)
        return cached_image_caption(ctx, self.captioner(), fingerprint)

    def prepare(self, ctx: ImageContext) -> None:
        proposals = self.proposals(ctx)
        if len(proposals):
            self.crop_features(ctx, proposals)
            self.mask_captions(ctx, proposals)
            self.image_caption(ctx)

    # -- expression level ------------------------------------------------------------------------------
    def predict(self, ctx: ImageContext, expressions: Sequence[str]) -> list[list[Candidate]]:
        expressions = list(expressions)
        if not expressions:
            return []
        parsed = [parse_expression(e) for e in expressions]  # refuses an empty expression before model work
        proposals = self.proposals(ctx)
        if len(proposals) == 0:
            return [[] for _ in expressions]
        crops = self.crop_features(ctx, proposals)
        captions = self.mask_captions(ctx, proposals)
        image_caption = self.image_caption(ctx)
        c = self.config
        wordnet, rule = self._wordnet()
        negatives = [
            negative_phrases(
                image_caption, p.noun_phrase, rule=rule, noun=c.resolved_synonym_noun, wordnet=wordnet
            )
            for p in parsed
        ]
        sentences = [e.strip().lower() for e in expressions]
        prompts = [[c.negative_template.format(chunk) for chunk in n.chunks] for n in negatives]
        with self.meter.stage("text"):
            texts = list(dict.fromkeys([*sentences, *captions, *(q for qs in prompts for q in qs)]))
            encoded = F.normalize(self.extractor().encode_texts(texts).float(), dim=-1)
        feature = {t: encoded[i] for i, t in enumerate(texts)}
        with self.meter.stage("scoring"):
            crops_n = F.normalize(crops.float(), dim=-1)
            captions_n = torch.stack([feature[t] for t in captions])
            centroids = mask_centroids(proposals.to_numpy()) if c.rectifier else None
            return [
                self._rank(
                    proposals, crops_n, captions_n, feature[s], [feature[q] for q in qs], s, centroids, n
                )
                for s, qs, n in zip(sentences, prompts, negatives, strict=True)
            ]

    def _rank(
        self,
        proposals: Proposals,
        crops: torch.Tensor,
        captions: torch.Tensor,
        sentence_feature: torch.Tensor,
        negative_features: list[torch.Tensor],
        sentence: str,
        centroids: np.ndarray | None,
        negatives: NegativePhrases,
    ) -> list[Candidate]:
        c = self.config
        scale = c.score_scale
        s_v = (scale * crops @ sentence_feature).numpy().astype(np.float64)
        p = (scale * captions @ sentence_feature).numpy().astype(np.float64)
        if negative_features:
            n = (scale * crops @ torch.stack(negative_features).T).mean(dim=1).numpy().astype(np.float64)
        else:
            n = np.zeros(len(proposals)) if c.resolved_nan_guard else np.full(len(proposals), np.nan)
        raw, score = combine_scores(
            s_v,
            p,
            n,
            lambda_p=c.lambda_p,
            lambda_n=c.lambda_n,
            normalization=c.normalization,
            softmax=c.softmax,
            nan_guard=c.resolved_nan_guard,
        )
        ordering = np.where(np.isnan(score), -np.inf, score)
        order = [int(i) for i in np.lexsort((np.arange(len(score)), -ordering))]
        best = int(np.argmax(score))  # the first maximum; the first NaN when scores are NaN (torch.argmax)
        fired, pick = False, best
        if c.rectifier and centroids is not None:
            query = find_directions(
                sentence,
                c.resolved_vocabulary,
                match=c.resolved_spatial_match,
                skip_punctuated=c.resolved_skip_punctuated,
            )
            result = rectify(score, centroids, query, best)
            fired, pick = result.fired, result.index
        order = [pick, *[i for i in order if i != pick]]
        candidates = []
        for rank, index in enumerate(order):
            values = {
                "s_v": s_v[index],
                "p": p[index],
                "n": n[index],
                "raw": raw[index],
                "score": score[index],
            }
            components = {k: _finite(float(v)) for k, v in values.items()}
            if any(not math.isfinite(float(v)) for v in values.values()):
                components["nan"] = 1.0
            components["rectifier_fired"] = 1.0 if fired else 0.0
            components["rectifier_pick"] = 1.0 if (fired and index == pick) else 0.0
            components["negatives"] = float(len(negatives.chunks))
            box = proposals.bbox_xyxy[index]
            candidates.append(
                Candidate(
                    rank=rank,
                    rle=dict(proposals.rles[index]),
                    bbox_xyxy=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                    area=int(proposals.area[index]),
                    score=components["score"],
                    components=components,
                )
            )
        return candidates
