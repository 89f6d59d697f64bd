"""TAS: text-augmented, spatial-aware zero-shot referring segmentation (Suo et al., 2023; docs/METHODS.md#tas).

For the N proposals of an image and an expression (lower-cased sentence ``t``), with ``s = score_scale``:

    S_v[i] = s * cos(CLIP_image(crop_i), CLIP_text(t))          crop: mask on black, padded square
    P[i]   = s * cos(CLIP_text(caption_i), CLIP_text(t))        caption of the blurred-background crop
    N[i]   = s * mean_j cos(CLIP_image(crop_i), CLIP_text("a photo of {chunk_j}"))
    raw    = S_v + lambda_p * P - lambda_n * N                   (0.1 and 0.7, the code's constants)
    score  = softmax(minmax(raw))                                over the N masks

The chunks are the noun chunks of one caption of the whole image minus those whose noun is a
near-synonym of the target noun (``workers.engine.methods.tas.lexicon``). The best score's mask is then re-selected by
the spatial rectifier (``workers.engine.methods.tas.spatial``) when the sentence names a side. Proposals: SAM's
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
- ``rectifier_rule``: ``"code"``: the code's rectifier, gated by its entity parse
  (``workers.engine.methods.tas.rectifier``); ``"directions"``: ours, any direction word.
- ``synonym_tags``: ``"penn"``: the code's first noun, the first Penn ``N*`` tag of NLTK's tokens (spaCy's
  Penn tags standing for NLTK's tagger, ``lexicon.penn_tags``); ``"coarse"``: spaCy's part of speech.
- ``noun_phrase_rule``: ``"code"``: the code's target noun phrase (``parse.target_noun_phrase``) for the
  negatives; ``"normalized"``: the parse of the normalised sentence.
- ``nan_guard``: an empty negative list gives N = 0 and equal raw scores give equal weights (ours); the
  code divides by zero, every score becomes NaN and, as ``torch.argmax`` does, the first mask wins. NaN
  values are reported as 0 with a ``nan`` component of 1, so candidates stay valid JSON.

Not reproduced in any mode (no effect on which mask wins, or not reproducible here): the code recomputes SAM
and captions per ref; its image captions come from files that were never published (ours: one caption per
image by the configured captioner); its crops use SAM's ``xywh`` box, one pixel short on the right and
bottom, and pad by ``(h - w) // 2`` per side; it parses with spaCy's transformer model (ours: the small
one) and tags with NLTK's perceptron (data not installable; spaCy's Penn tags stand in).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from workers.engine.blocks.captions.captioner import Captioner, cached_image_caption, cached_mask_captions
from workers.engine.blocks.clip.features import ClipFeatureExtractor, clip_extractor
from workers.engine.blocks.masks import Proposals
from workers.engine.blocks.proposals.cached import cached_proposals, filter_proposals
from workers.engine.blocks.ranking import candidate_of
from workers.engine.blocks.text import get_nlp, parse_expression
from workers.engine.core.cache import ImageContext, cache_params
from workers.engine.core.types import Candidate
from workers.engine.methods.base import Pipeline
from workers.engine.methods.tas.config import TasConfig
from workers.engine.methods.tas.lexicon import (
    SynonymRule,
    WordNetMissingError,
    load_wordnet,
    near_synonyms,
    phrase_noun,
    phrase_noun_code,
)
from workers.engine.methods.tas.parse import entity_parse, target_noun_phrase
from workers.engine.methods.tas.rectifier import RectifierError, code_rectify
from workers.engine.methods.tas.spatial import find_directions, mask_centroids, rectify

log = logging.getLogger(__name__)


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
    precision: str = "float64",
) -> tuple[np.ndarray, np.ndarray]:
    """``(raw, score)`` of N masks: ``raw = s_v + lambda_p * p - lambda_n * n``, then min-max and softmax.

    With ``nan_guard``, equal raw scores normalise to zeros (equal weights); without it they divide by
    zero as in the public code (NaN). ``precision``: ``"float64"`` (ours) or ``"float32"`` (the code's
    torch tensors; the rectifier then compares the same float32 weights).
    """
    dtype = np.float32 if precision == "float32" else np.float64
    raw = (
        np.asarray(s_v, dtype)
        + dtype(lambda_p) * np.asarray(p, dtype)
        - dtype(lambda_n) * np.asarray(n, dtype)
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
    caption: str,
    noun_phrase: str,
    *,
    rule: SynonymRule,
    noun: str = "head",
    wordnet: Any | None = None,
    tags: str = "coarse",
) -> NegativePhrases:
    """Noun chunks of ``caption`` whose noun is not a near-synonym of ``noun_phrase``'s noun.

    Args:
        caption: the image-level caption.
        noun_phrase: the expression's target noun phrase.
        rule: the near-synonym rule (``workers.engine.methods.tas.lexicon.SynonymRule``).
        noun: ``"head"`` or ``"first"`` (which noun of each phrase is compared).
        wordnet: an nltk WordNet reader, or ``None`` with ``rule.use_wordnet`` false.
        tags: ``"coarse"``: nouns by spaCy's part of speech on the parse; ``"penn"``: the code's, the first
            Penn ``N*`` tag of the phrase's NLTK tokens (``lexicon.phrase_noun_code``; ``noun`` is then
            ignored).
    """
    nlp = get_nlp()
    first = noun == "first"
    if tags == "penn":
        target = phrase_noun_code(noun_phrase)
    else:
        target = phrase_noun(nlp(noun_phrase), first=first) if noun_phrase.strip() else None
    kept, excluded = [], []
    for chunk in nlp(caption).noun_chunks if caption.strip() else ():
        text = chunk.text.strip()
        if not text:
            continue
        candidate = phrase_noun_code(text) if tags == "penn" else phrase_noun(chunk, first=first)
        if near_synonyms(candidate, target, rule, wordnet):
            excluded.append(text)
        else:
            kept.append(text)
    return NegativePhrases(tuple(kept), tuple(excluded), target.text if target else None)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


# ---------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------


class TasPipeline(Pipeline):
    """TAS; see the module docstring."""

    config_class = TasConfig
    config: TasConfig

    def __init__(self, config: TasConfig, *, hub: Any, cache: Any, meter: Any, name: str = "") -> None:
        super().__init__(config, hub=hub, cache=cache, meter=meter, name=name)
        self._warned_fallback = False

    # -- models ----------------------------------------------------------------------------------------
    def extractor(self) -> ClipFeatureExtractor:
        """The hub's CLIP extractor with TAS's crop settings."""
        return clip_extractor(self.hub, self.config.clip_model, self.config.crop_features)

    def captioner(self) -> Captioner:
        """The hub's captioner with this config's caption settings."""
        c = self.config
        return self.hub.wrapper(
            c.captioner_model,
            "captioner",
            lambda bundle: Captioner(bundle, model_name=c.captioner_model, settings=c.caption),
            key=c.caption.to_dict(),
        )

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
        raw = cached_proposals(ctx, self.hub, c.proposal_source, c.amg)
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
        params = cache_params(
            models={"clip": self.hub.fingerprint(self.config.clip_model)},
            masks=proposals,
            settings=extractor.describe(),
        )

        def compute() -> dict[str, torch.Tensor]:
            with ctx.meter.stage("clip_visual"):
                prepared = extractor.prepare_image(ctx.rgb)
                return {"crops": extractor.local_features(prepared, proposals.to_tensor())}

        return ctx.cached("tas_crop_clip", params, compute)["crops"]

    def mask_captions(self, ctx: ImageContext, proposals: Proposals) -> list[str]:
        """One caption per mask (blurred-background crop), once per image."""
        fingerprint = self.hub.fingerprint(self.config.captioner_model)
        return cached_mask_captions(ctx, self.captioner(), proposals, fingerprint)

    def image_caption(self, ctx: ImageContext) -> str:
        """The caption of the whole image, once per image."""
        fingerprint = self.hub.fingerprint(self.config.captioner_model)
        return cached_image_caption(ctx, self.captioner(), fingerprint)

    def _prepare(self, ctx: ImageContext) -> None:
        proposals = self.proposals(ctx)
        if len(proposals):
            self.crop_features(ctx, proposals)
            self.mask_captions(ctx, proposals)
            self.image_caption(ctx)

    # -- expression level ------------------------------------------------------------------------------
    def noun_phrase(self, expression: str, parsed: Any) -> str:
        """The target noun phrase: of the normalised parse (ours) or the code's (``noun_phrase_rule``)."""
        if self.config.resolved_noun_phrase_rule == "code":
            return target_noun_phrase(expression.lower())
        return str(parsed.noun_phrase)

    def negatives(
        self, image_caption: str, expression: str, parsed: Any, wordnet: Any | None, rule: SynonymRule
    ) -> NegativePhrases:
        """The expression's negative phrases from the image caption (see :func:`negative_phrases`)."""
        c = self.config
        return negative_phrases(
            image_caption,
            self.noun_phrase(expression, parsed),
            rule=rule,
            noun=c.resolved_synonym_noun,
            wordnet=wordnet,
            tags=c.resolved_synonym_tags,
        )

    def _predict(self, ctx: ImageContext, expressions: list[str]) -> list[list[Candidate]]:
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
            self.negatives(image_caption, e, p, wordnet, rule)
            for e, p in zip(expressions, parsed, strict=True)
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
            precision=c.resolved_score_precision,
        )
        ordering = np.where(np.isnan(score), -np.inf, score)
        order = [int(i) for i in np.lexsort((np.arange(len(score)), -ordering))]
        best = int(np.argmax(score))  # the first maximum; the first NaN when scores are NaN (torch.argmax)
        fired, pick = False, best
        if c.rectifier and centroids is not None and c.resolved_rectifier_rule == "code":
            lowered = sentence.lower()
            try:
                result = code_rectify(
                    sentence, entity_parse(lowered), target_noun_phrase(lowered), score, centroids, best
                )
                fired, pick = bool(result.branch), result.index
            except RectifierError as exc:  # the code raises here; we keep the first choice
                log.warning("%s; keeping the first choice", exc)
        elif c.rectifier and centroids is not None:
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
            candidates.append(candidate_of(proposals, index, rank, components["score"], components))
        return candidates
