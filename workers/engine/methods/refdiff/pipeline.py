"""Ref-Diff (Ni et al., 2023): Stable Diffusion cross-attention as a generative score, fused with CLIP.

Per expression (docs/METHODS.md#ref-diff):

1. Generative pass (``workers.engine.methods.refdiff.noising``): the image padded square, resized to
   ``image_size`` and VAE-encoded (once per image, cached), noised to ``strength`` of a ``steps``-step DDIM
   schedule and denoised with guidance ``guidance_scale``, prompt = the sentence, negative prompt ``""``.
2. Attention map (``workers.engine.methods.refdiff.attention``): pre-softmax cross-attention at the query grid
   ``image_size / attention_downsample`` (32 x 32 for 1024 px; snapped to the nearest grid the UNet has,
   so the tiny 256 px model uses its 8 x 8 layer; ``attention_resolution`` names a grid directly), heads
   averaged, CFG-combined, the column of the spaCy subject's last CLIP BPE token, min-max normalised per
   (layer, step), averaged, resized back, the padding cropped, normalised again. Cached per
   (image, expression, settings): each sentence gets its own map.
3. Proposals: SAM / MobileSAM automatic masks (``proposal_source``, cached per image), or, with
   ``proposal_source="attention"``, the proposal-free mode: thresholds of the attention map
   (``attention_thresholds``, 5 % ... 95 %), so no SAM model is loaded at all.
4. Scores (``workers.engine.methods.refdiff.scores``): ``s_g`` = mean attention inside minus outside; ``hard`` and
   ``soft`` CLIP scores (cosine of the region feature with ``w_t t + w_c c``, t = sentence, c = subject
   word); fused as ``0.7 hard + 0.3 soft + 0.05 s_g`` (``fusion="code"``) or
   ``alpha s_g + (1 - alpha) s_D`` (``fusion="paper"``). ``use_discriminative=false`` ranks by ``s_g``
   alone and loads no CLIP (the paper's generative-only variant).
5. Filter (the code's): only the ``max_proposals`` (10) largest proposals with area above ``min_area``
   (10000 px for RefCOCO/RefCOCO+, 0 for RefCOCOg, by ``dataset``) are scored; the others never win.

Each candidate's ``components``: ``s_g``, ``hard``, ``soft`` (0 when not computed), ``score`` and, in the
proposal-free mode, ``threshold``.

Differences from the public code; each has its own config key (``null`` follows ``peer_compat``), and
``peer_compat=true`` takes the code's side of all of them (docs/METHODS.md#ref-diff-differences):

- ``filtered_score_zero``: filtered proposals are left out (score -inf); the code multiplies their score by 0,
  so when every kept proposal scores below 0 a filtered one wins (returned with score 0 and ``filtered``).
- ``ramp_match``: left/right as whole words (``left``, ``leftmost``, ``lefthand``); the code tests
  case-sensitive substrings, so "bright" turns on the right ramp and "Left" does not turn on the left one.
- ``key_word_case``: the key word from the lower-cased parse; the code parses the sentence as typed
  ("Left man": ours ``left``, the code's ``man``; ``attention.code_key_word``).
- ``subject_cut``: the key word's token at its own position; the code cuts the sentence at the first
  *substring* occurrence of the key word ("the woman next to the man" cuts inside "woman").
- ``prompt_suffix``: the SD prompt is the sentence; the code appends ", " (its empty positive prompt).
- ``noising.peer_noise_level``: the latent is noised to the first denoised timestep (diffusers' img2img);
  the code's DDIM sampler noises one timestep higher.
- ``attention_postprocess``: the map goes back to the image bilinearly in float; the code: per-map
  min-max without epsilon, float64 average, ``uint8``, PIL Lanczos (``noising.attention_to_image``).
- ``position_interpolation``: CLIP's positional embedding is resized to the exact grid of a non-square
  input; the code uses DINO's ``scale_factor = (g + 0.1) / 14``.
- ``ramp_precision``: the positional ramp in float32; the code's in float64.
- ``topk_ties``: equal areas at the k-th place keep the earlier masks; the code's ``np.argpartition`` order.
- ``empty_fallback``: an image with no proposal gives no candidate; the code falls back to a whole-image mask.
- ``min_area_ratio``: the code's ``filter_size_ratio`` (0 in its configs), the same in both modes.
- Not reproduced, as they are plain bugs: the per-ref cache (the code reuses the first sentence's subject,
  text features and attention map for every later sentence of a ref) and OpenCV's BGR order.

``tests/engine/test_peer_parity_refdiff.py`` checks each piece against the code's own outputs
(``scripts/peer_parity/refdiff_fixtures.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workers.engine.blocks.clip.config import ClipFeatureConfig
from workers.engine.blocks.clip.features import clip_extractor
from workers.engine.blocks.geometry import SquareGeometry
from workers.engine.blocks.masks import Proposals
from workers.engine.blocks.proposals.cached import cached_proposals
from workers.engine.blocks.ranking import rank_candidates
from workers.engine.blocks.text import ParsedExpression, parse_expression
from workers.engine.core.cache import ImageContext, cache_params
from workers.engine.core.types import Candidate
from workers.engine.methods.base import Pipeline
from workers.engine.methods.refdiff.attention import (
    AttentionStore,
    choose_resolution,
    code_key_word,
    cross_attention_layers,
    select_layers,
    subject_attention_map,
    subject_char_end,
    subject_token_index,
    subject_token_index_peer,
)
from workers.engine.methods.refdiff.config import RefDiffConfig
from workers.engine.methods.refdiff.noising import (
    attention_to_image,
    denoise_with_capture,
    encode_latents,
    latent_size,
)
from workers.engine.methods.refdiff.scores import (
    RegionClipEncoder,
    attention_proposals,
    describe_encoder,
    fuse_scores,
    generative_scores,
    kept_for_scoring,
    positional_ramp,
    ramp_direction,
    text_mix,
)


@dataclass(frozen=True)
class AttentionResult:
    """One expression's attention map on the image and how it was made.

    Attributes:
        image_map: ``H x W`` float32 in [0, 1].
        square_map: ``S x S`` float32, the averaged query-grid map before the resize.
        token_index: the subject's CLIP token position in the prompt.
        prompt: what the UNet was conditioned on.
    """

    image_map: torch.Tensor
    square_map: torch.Tensor
    token_index: int
    prompt: str


class RefDiffPipeline(Pipeline):
    """Ref-Diff; see the module docstring."""

    config_class = RefDiffConfig
    config: RefDiffConfig

    # -- text ---------------------------------------------------------------------------------------
    def prompt_for(self, expression: str) -> str:
        """The SD prompt of an expression (the code appends ", ")."""
        return f"{expression}, " if self.config.resolved_prompt_suffix else expression

    def token_index(self, tokenizer: Any, expression: str, parsed: ParsedExpression) -> int:
        """The subject's last CLIP BPE position in :meth:`prompt_for`'s prompt."""
        prompt = self.prompt_for(expression)
        max_length = int(getattr(tokenizer, "model_max_length", 77))
        if self.config.resolved_key_word_case == "typed":
            word, end = code_key_word(expression[:2000])
            if self.config.resolved_subject_cut == "first_substring":  # the code cuts the sentence
                return subject_token_index_peer(tokenizer, expression, word, max_length=max_length)
            return subject_token_index(tokenizer, prompt, end, max_length=max_length)
        if parsed.subject_index < 0:
            return subject_token_index(tokenizer, prompt, len(expression), max_length=max_length)
        if self.config.resolved_subject_cut == "first_substring":
            return subject_token_index_peer(
                tokenizer, expression.lower(), parsed.subject, max_length=max_length
            )
        end = subject_char_end(expression[:2000], parsed.tokens, parsed.subject_index)
        return subject_token_index(tokenizer, prompt, end, max_length=max_length)

    # -- generative ---------------------------------------------------------------------------------
    def _layers(self, bundle: Any) -> dict[str, int]:
        c = self.config
        size = latent_size(bundle, c.resolved_noising)
        available = [
            s
            for place, s in cross_attention_layers(bundle.unet, size).values()
            if place in c.attention_places
        ]
        wanted = c.attention_resolution or max(1, c.noising.image_size // c.attention_downsample)
        return select_layers(bundle.unet, size, choose_resolution(available, wanted), c.attention_places)

    def _latent(self, ctx: ImageContext, bundle: Any, fingerprint: str) -> torch.Tensor:
        c = self.config.resolved_noising
        params = cache_params(
            models={"diffusion": fingerprint}, image_size=c.image_size, pad_value=c.pad_value, seed=c.seed
        )

        def compute() -> torch.Tensor:
            with ctx.meter.stage("sd_encode"), ctx.meter.model_call(f"{self.config.diffusion_model}:vae"):
                return encode_latents(bundle, ctx.rgb, c)

        return ctx.cached("sd_latent", params, compute)

    def _map_params(
        self, fingerprint: str, layers: dict[str, int], prompt: str, token: int
    ) -> dict[str, Any]:
        noising = self.config.resolved_noising.to_dict()
        noising.pop("batch_expressions")
        return cache_params(
            models={"diffusion": fingerprint},
            settings=noising,
            layers=sorted(layers),
            kind=self.config.attention_kind,
            postprocess=self.config.resolved_attention_postprocess,
            prompt=prompt,
            token=token,
        )

    def attention_maps(
        self, ctx: ImageContext, expressions: Sequence[str], parsed: Sequence[ParsedExpression]
    ) -> list[AttentionResult]:
        """Each expression's attention map, cached per (image, expression, settings); new ones batched."""
        c = self.config
        bundle = self.hub.get(c.diffusion_model)
        fingerprint = self.hub.fingerprint(c.diffusion_model)
        layers = self._layers(bundle)
        prompts = [self.prompt_for(e) for e in expressions]
        code_maps = c.resolved_attention_postprocess == "code"
        tokens = [self.token_index(bundle.tokenizer, e, p) for e, p in zip(expressions, parsed, strict=True)]
        params = [self._map_params(fingerprint, layers, p, t) for p, t in zip(prompts, tokens, strict=True)]
        squares: dict[int, torch.Tensor] = {}
        missing = []
        for i, p in enumerate(params):
            hit = ctx.cache.get(ctx.key("refdiff_attention", p))
            if hit is None:
                missing.append(i)
            else:
                squares[i] = hit
        # One generation per distinct prompt (a repeated expression is computed once).
        first_of: dict[tuple[str, int], int] = {}
        todo = []
        for i in missing:
            key = (prompts[i], tokens[i])
            if key not in first_of:
                first_of[key] = i
                todo.append(i)
        if todo:
            latent = self._latent(ctx, bundle, fingerprint)
            batch = c.noising.batch_expressions
            for start in range(0, len(todo), batch):
                chunk = todo[start : start + batch]
                store = AttentionStore(layers, kinds=(c.attention_kind,))
                with ctx.meter.stage("sd_denoise"):
                    denoise_with_capture(
                        bundle,
                        latent,
                        [prompts[i] for i in chunk],
                        c.resolved_noising,
                        store,
                        meter=ctx.meter,
                        model_name=f"{c.diffusion_model}:unet",
                    )
                with ctx.meter.stage("attention_map"):
                    maps = subject_attention_map(
                        store,
                        [tokens[i] for i in chunk],
                        guidance_scale=c.noising.guidance_scale,
                        kind=c.attention_kind,
                        eps=0.0 if code_maps else 1e-8,
                        accumulate=torch.float64 if code_maps else torch.float32,
                    )
                for j, i in enumerate(chunk):
                    value = maps[j].contiguous()
                    ctx.cache.put(ctx.key("refdiff_attention", params[i]), value)
                    squares[i] = value
        for i in missing:
            squares.setdefault(i, squares[first_of[(prompts[i], tokens[i])]])
        geometry = SquareGeometry(*ctx.size)
        return [
            AttentionResult(
                attention_to_image(squares[i], geometry, c.resolved_attention_postprocess),
                squares[i],
                tokens[i],
                prompts[i],
            )
            for i in range(len(expressions))
        ]

    # -- proposals ----------------------------------------------------------------------------------
    def sam_proposals(self, ctx: ImageContext) -> Proposals:
        """The image's SAM proposals (generated once per image); the code's whole-image fallback in peer_compat."""
        proposals = cached_proposals(ctx, self.hub, self.config.proposal_source, self.config.amg)
        if len(proposals) == 0 and self.config.resolved_empty_fallback:
            height, width = ctx.size
            return Proposals.from_masks(np.ones((1, height, width), dtype=bool))
        return proposals

    # -- discriminative -----------------------------------------------------------------------------
    def _encoder(self) -> RegionClipEncoder:
        """The hub's region encoder on this config's CLIP model."""
        c = self.config

        def build(bundle: Any) -> RegionClipEncoder:
            cfg = getattr(bundle, "preprocess_cfg", {}) or {}
            kwargs = {k: cfg[k] for k in ("mean", "std") if cfg.get(k) is not None}
            return RegionClipEncoder(
                bundle.model,
                model_name=c.clip_model,
                max_masks_per_forward=c.max_masks_per_forward,
                position_interpolation=c.resolved_position_interpolation,
                **kwargs,
            )

        key = (c.max_masks_per_forward, c.resolved_position_interpolation)
        return self.hub.wrapper(c.clip_model, "refdiff_regions", build, key=key)

    def _region_params(
        self, encoder: RegionClipEncoder, proposals: Proposals, **extra: Any
    ) -> dict[str, Any]:
        return cache_params(
            models={"clip": self.hub.fingerprint(self.config.clip_model)},
            masks=proposals,
            settings=describe_encoder(encoder),
            **extra,
        )

    def soft_features(self, ctx: ImageContext, proposals: Proposals) -> torch.Tensor:
        encoder = self._encoder()
        params = self._region_params(encoder, proposals, max_side=self.config.soft_max_side)

        def compute() -> torch.Tensor:
            with ctx.meter.stage("clip_soft"):
                return encoder.soft_features(ctx.rgb, proposals.to_numpy(), self.config.soft_max_side)

        return ctx.cached("refdiff_soft", params, compute)

    def hard_features(self, ctx: ImageContext, proposals: Proposals, direction: str | None) -> torch.Tensor:
        encoder = self._encoder()
        precision = self.config.resolved_ramp_precision
        params = self._region_params(
            encoder, proposals, ramp=direction, crop=self.config.hard_crop, ramp_precision=precision
        )

        def compute() -> torch.Tensor:
            with ctx.meter.stage("clip_hard"):
                image = positional_ramp(ctx.rgb, direction, precision)
                return encoder.hard_features(image, proposals.to_numpy(), self.config.hard_crop)

        return ctx.cached("refdiff_hard", params, compute)

    def text_features(self, expression: str, parsed: ParsedExpression) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sentence, subject)`` unnormalised ``1 x D`` CLIP text features."""
        extractor = clip_extractor(self.hub, self.config.clip_model, ClipFeatureConfig())
        if self.config.resolved_key_word_case == "typed":
            subject = code_key_word(expression[:2000])[0]
        else:
            subject = parsed.subject or expression
        with self.meter.stage("text"):
            encoded = extractor.encode_texts([expression, subject])
        return encoded[:1], encoded[1:]

    # -- pipeline -----------------------------------------------------------------------------------
    def _prepare(self, ctx: ImageContext) -> None:
        """Image-level work: the SD latent and, with SAM proposals, the proposals and their soft features."""
        c = self.config
        bundle = self.hub.get(c.diffusion_model)
        self._latent(ctx, bundle, self.hub.fingerprint(c.diffusion_model))
        if c.proposal_free:
            return
        proposals = self.sam_proposals(ctx)
        kept = proposals.filter(self._keep(proposals, c.max_proposals))
        if len(kept) and c.use_discriminative:
            self.soft_features(ctx, kept)
            self.hard_features(ctx, kept, None)

    def _keep(self, proposals: Proposals, limit: int | None) -> np.ndarray:
        c = self.config
        return kept_for_scoring(
            proposals,
            max_proposals=limit,
            min_area=c.resolved_min_area,
            min_area_ratio=c.min_area_ratio,
            ties=c.resolved_topk_ties,
        )

    def _predict(self, ctx: ImageContext, expressions: list[str]) -> list[list[Candidate]]:
        parsed = [parse_expression(e) for e in expressions]  # refuses an empty expression before model work
        maps = self.attention_maps(ctx, expressions, parsed)
        shared = None if self.config.proposal_free else self.sam_proposals(ctx)
        results = []
        for expression, parse, attention in zip(expressions, parsed, maps, strict=True):
            if shared is None:
                with self.meter.stage("attention_proposals"):
                    proposals, thresholds = attention_proposals(
                        attention.image_map,
                        self.config.attention_thresholds,
                        self.config.attention_threshold_mode,
                    )
            else:
                proposals, thresholds = shared, None
            results.append(self._rank(ctx, expression, parse, attention, proposals, thresholds))
        return results

    def _rank(
        self,
        ctx: ImageContext,
        expression: str,
        parsed: ParsedExpression,
        attention: AttentionResult,
        proposals: Proposals,
        thresholds: list[float] | None,
    ) -> list[Candidate]:
        c = self.config
        n = len(proposals)
        if n == 0:
            return []
        limit = c.attention_max_proposals if thresholds is not None else c.max_proposals
        keep = self._keep(proposals, limit)
        kept = proposals.filter(keep)
        s_g = np.zeros(n)
        hard = np.zeros(n)
        soft = np.zeros(n)
        fused = np.full(n, 0.0 if c.resolved_filtered_score_zero else -np.inf)
        if len(kept):
            with self.meter.stage("scoring"):
                s_g_kept = generative_scores(attention.image_map, kept.to_tensor())
            hard_kept = soft_kept = None
            if c.use_discriminative:
                direction = ramp_direction(
                    parsed.tokens, expression, peer_compat=c.resolved_ramp_match == "substring"
                )
                direction = direction if c.positional_ramp else None
                sentence, subject = self.text_features(expression, parsed)
                hard_text = text_mix(sentence, subject, c.hard_text_weight, c.hard_subject_weight)
                soft_text = text_mix(sentence, subject, c.soft_text_weight, c.soft_subject_weight)
                hard_kept = (self.hard_features(ctx, kept, direction) @ hard_text.T)[:, 0]
                soft_kept = (self.soft_features(ctx, kept) @ soft_text.T)[:, 0]
                hard[keep], soft[keep] = hard_kept.numpy(), soft_kept.numpy()
            fused_kept = fuse_scores(
                s_g_kept,
                hard_kept,
                soft_kept,
                fusion=c.fusion,
                hard_weight=c.hard_weight,
                soft_weight=c.soft_weight,
                generative_weight=c.generative_weight,
                alpha=c.alpha,
            )
            s_g[keep], fused[keep] = s_g_kept.numpy(), fused_kept.numpy()
        components: dict[str, Any] = {"s_g": s_g, "hard": hard, "soft": soft, "score": fused}
        if thresholds is not None:
            components["threshold"] = np.asarray(thresholds, dtype=np.float64)
        if c.resolved_filtered_score_zero:
            components["filtered"] = (~keep).astype(np.float64)
            return rank_candidates(proposals, fused, components)
        index = np.flatnonzero(keep)
        return rank_candidates(
            proposals.filter(index), fused[index], {name: v[index] for name, v in components.items()}
        )
