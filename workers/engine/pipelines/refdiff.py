"""Ref-Diff (Ni et al., 2023): Stable Diffusion cross-attention as a generative score, fused with CLIP.

Per expression (METHODS.md section 3):

1. Generative pass (``workers.engine.diffusion_noising``): the image padded square, resized to
   ``image_size`` and VAE-encoded (once per image, cached), noised to ``strength`` of a ``steps``-step DDIM
   schedule and denoised with guidance ``guidance_scale``, prompt = the sentence, negative prompt ``""``.
2. Attention map (``workers.engine.diffusion_attention``): pre-softmax cross-attention at the query grid
   ``image_size / attention_downsample`` (32 x 32 for 1024 px; snapped to the nearest grid the UNet has,
   so the tiny 256 px model uses its 8 x 8 layer; ``attention_resolution`` names a grid directly), heads
   averaged, CFG-combined, the column of the spaCy subject's last CLIP BPE token, min-max normalised per
   (layer, step), averaged, resized back, the padding cropped, normalised again. Cached per
   (image, expression, settings): each sentence gets its own map.
3. Proposals: SAM / MobileSAM automatic masks (``proposal_source``, cached per image), or, with
   ``proposal_source="attention"``, the proposal-free mode: thresholds of the attention map
   (``attention_thresholds``, 5 % ... 95 %), so no SAM model is loaded at all.
4. Scores (``workers.engine.refdiff_scores``): ``s_g`` = mean attention inside minus outside; ``hard`` and
   ``soft`` CLIP scores (cosine of the region feature with ``w_t t + w_c c``, t = sentence, c = subject
   word); fused as ``0.7 hard + 0.3 soft + 0.05 s_g`` (``fusion="code"``) or
   ``alpha s_g + (1 - alpha) s_D`` (``fusion="paper"``). ``use_discriminative=false`` ranks by ``s_g``
   alone and loads no CLIP (the paper's generative-only variant).
5. Filter (the code's): only the ``max_proposals`` (10) largest proposals with area above ``min_area``
   (10000 px for RefCOCO/RefCOCO+, 0 for RefCOCOg, by ``dataset``) are scored; the others never win.

Each candidate's ``components``: ``s_g``, ``hard``, ``soft`` (0 when not computed), ``score`` and, in the
proposal-free mode, ``threshold``.

Differences from the public code; ``peer_compat=true`` restores the first six:

- Filtered proposals are left out of the ranking (score -inf); the code multiplies their score by 0, so
  when every kept proposal scores below 0 a filtered one wins. peer_compat: they are returned with score 0.
- left/right match whole words (``left``, ``leftmost``, ``lefthand``); the code tests case-sensitive
  substrings, so "bright" turns on the right ramp and "Left" does not turn on the left one.
- The subject token is found at the subject's own position; the code cuts the sentence at the first
  *substring* occurrence of the subject word ("the woman next to the man" cuts inside "woman").
- The SD prompt is the sentence; the code appends ", " (its empty positive prompt).
- The latent is noised to the first denoised timestep (diffusers' img2img); the code's DDIM sampler noises
  one timestep higher (``peer_noise_level``).
- An image with no proposal gives no candidate (the benchmark scores it IoU 0); the code falls back to a
  whole-image mask.
- Not reproduced, as they are plain bugs: the per-ref cache (the code reuses the first sentence's subject,
  text features and attention map for every later sentence of a ref) and OpenCV's BGR order.
- Resizes: the map goes back to the image bilinearly in float (the code: 8-bit Lanczos); the positional
  embedding of non-square CLIP inputs is resized to the exact grid (the code: DINO's scale-factor trick).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from workers.engine.clip_features import VisualFeatureSettings
from workers.engine.diffusion_attention import (
    ATTENTION_KINDS,
    PLACES,
    AttentionStore,
    choose_resolution,
    cross_attention_layers,
    select_layers,
    subject_attention_map,
    subject_char_end,
    subject_token_index,
    subject_token_index_peer,
)
from workers.engine.diffusion_noising import (
    NoisingSettings,
    SquareGeometry,
    attention_to_image,
    denoise_with_capture,
    encode_latents,
    latent_size,
)
from workers.engine.errors import ConfigError
from workers.engine.masks import Proposals
from workers.engine.pipelines.base import ImageContext, Pipeline, PipelineConfig
from workers.engine.pipelines.registry import model_for_profile, register_pipeline
from workers.engine.pipelines.shared import (
    SAM_SOURCES,
    ExtractorPool,
    cached_proposals,
    model_fingerprint,
    proposals_digest,
    rank_candidates,
)
from workers.engine.proposals import AmgConfig
from workers.engine.refdiff_scores import (
    FUSION_CHOICES,
    HARD_CROP_CHOICES,
    THRESHOLD_MODES,
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
from workers.engine.text import ParsedExpression, parse_expression
from workers.engine.types import Candidate

ATTENTION_SOURCE = "attention"

#: The code's minimum proposal area per dataset (areas at or below it are filtered).
DATASET_MIN_AREA = {"refcoco": 10000, "refcoco+": 10000, "refcocog": 0}

#: The proposal-free thresholds: 5 %, 10 %, ..., 95 % of the map's range.
DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))

#: Tiny-profile input side: the random tiny SD model is built for 256 px (a 32 x 32 latent).
TINY_IMAGE_SIZE = 256


@dataclass(frozen=True)
class RefDiffConfig(PipelineConfig):
    """Settings of Ref-Diff; defaults are the public code's (config/refcoco.yaml) unless the docstring says.

    Attributes:
        dataset: preset of ``min_area`` (refcoco, refcoco+: 10000; refcocog: 0).
        proposal_source: a SAM model of the store, or ``"attention"`` (proposal-free).
        amg: SAM automatic-mask-generator settings (``AmgConfig`` keys).
        max_proposals: only the k largest proposals are scored (10); ``null`` scores all.
        min_area: areas at or below are filtered; ``null`` takes the dataset preset.
        attention_thresholds, attention_threshold_mode, attention_max_proposals: the proposal-free mode
            (fractions of the map's range, or quantiles; an optional cap on the number of levels kept).
        diffusion_model: store name of the SD model. image_size, steps, strength, guidance_scale, eta,
            seed, pad_value, negative_prompt, batch_expressions: the generative pass
            (``workers.engine.diffusion_noising.NoisingSettings``).
        attention_downsample: query grid side = image_size / this (32: the 32 x 32 layers at 1024 px).
        attention_resolution: a grid side instead (overrides ``attention_downsample``); either is snapped
            to the nearest grid the UNet has.
        attention_places: which of down / mid / up blocks are captured.
        attention_kind: ``"logits"`` (pre-softmax, the code's) or ``"probs"``.
        clip_model: store name of the CLIP ViT. use_discriminative: fuse CLIP scores (false: ``s_g`` only).
        hard_crop: ``"shorter_side"`` (the code's) or ``"square"``. soft_max_side: cap of the soft pass's
            image side (``null``: the image's own size, as the code).
        positional_ramp: apply the left/right ramp to the hard crops.
        hard_text_weight, hard_subject_weight, soft_text_weight, soft_subject_weight: text mixes.
        fusion, hard_weight, soft_weight, generative_weight, alpha: the fusion (module docstring).
        max_masks_per_forward: CLIP crops / class tokens per forward.
        peer_compat: reproduce the public code's quirks (module docstring).
    """

    dataset: str = "refcoco"
    proposal_source: str = "sam_vit_h"
    amg: dict[str, Any] = field(default_factory=lambda: AmgConfig().to_dict())
    max_proposals: int | None = 10
    min_area: int | None = None
    attention_thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    attention_threshold_mode: str = "value"
    attention_max_proposals: int | None = None
    diffusion_model: str = "sd_1_5"
    image_size: int = 1024
    steps: int = 20
    strength: float = 0.1
    guidance_scale: float = 9.0
    eta: float = 0.0
    seed: int = 0
    pad_value: int = 0
    negative_prompt: str = ""
    batch_expressions: int = 4
    attention_downsample: int = 32
    attention_resolution: int | None = None
    attention_places: tuple[str, ...] = PLACES
    attention_kind: str = "logits"
    clip_model: str = "clip_vit_b_16"
    use_discriminative: bool = True
    hard_crop: str = "shorter_side"
    soft_max_side: int | None = None
    positional_ramp: bool = True
    hard_text_weight: float = 1.0
    hard_subject_weight: float = 0.0
    soft_text_weight: float = 0.5
    soft_subject_weight: float = 0.5
    fusion: str = "code"
    hard_weight: float = 0.7
    soft_weight: float = 0.3
    generative_weight: float = 0.05
    alpha: float = 0.1
    max_masks_per_forward: int = 32
    peer_compat: bool = False

    def validate(self) -> None:
        self.check_choice("dataset", sorted(DATASET_MIN_AREA))
        self.check_choice("proposal_source", [*SAM_SOURCES, ATTENTION_SOURCE])
        try:
            AmgConfig.from_dict(self.amg)
        except ConfigError as exc:
            raise ConfigError(f"config key 'amg': {exc}") from exc
        if self.max_proposals is not None:
            self.check_range("max_proposals", 1)
        if self.min_area is not None:
            self.check_range("min_area", 0)
        if not self.attention_thresholds:
            raise ConfigError("config key 'attention_thresholds' needs at least one threshold")
        for t in self.attention_thresholds:
            if not 0.0 <= t <= 1.0:
                raise ConfigError(f"config key 'attention_thresholds' holds {t}, outside [0, 1]")
        self.check_choice("attention_threshold_mode", THRESHOLD_MODES)
        if self.attention_max_proposals is not None:
            self.check_range("attention_max_proposals", 1)
        if not self.diffusion_model:
            raise ConfigError("config key 'diffusion_model' must name a diffusion model of the store")
        self.check_range("attention_downsample", 1)
        if self.attention_resolution is not None:
            self.check_range("attention_resolution", 1)
        if not self.attention_places or any(p not in PLACES for p in self.attention_places):
            raise ConfigError(f"config key 'attention_places' must be a non-empty subset of {list(PLACES)}")
        self.check_choice("attention_kind", ATTENTION_KINDS)
        if not self.clip_model:
            raise ConfigError("config key 'clip_model' must name a CLIP model of the store")
        self.check_choice("hard_crop", HARD_CROP_CHOICES)
        if self.soft_max_side is not None:
            self.check_range("soft_max_side", 16)
        self.check_choice("fusion", FUSION_CHOICES)
        self.check_range("alpha", 0.0, 1.0)
        self.check_range("max_masks_per_forward", 1)
        self.noising  # noqa: B018 - building the settings validates the generative keys

    @property
    def resolved_min_area(self) -> int:
        return int(self.min_area) if self.min_area is not None else DATASET_MIN_AREA[self.dataset]

    @property
    def amg_config(self) -> AmgConfig:
        return AmgConfig.from_dict(self.amg)

    @property
    def proposal_free(self) -> bool:
        return self.proposal_source == ATTENTION_SOURCE

    @property
    def noising(self) -> NoisingSettings:
        return NoisingSettings(
            image_size=self.image_size,
            steps=self.steps,
            strength=self.strength,
            guidance_scale=self.guidance_scale,
            eta=self.eta,
            seed=self.seed,
            pad_value=self.pad_value,
            negative_prompt=self.negative_prompt,
            peer_noise_level=self.peer_compat,
            batch_expressions=self.batch_expressions,
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


@register_pipeline("refdiff")
class RefDiffPipeline(Pipeline):
    """Ref-Diff; see the module docstring."""

    config_class = RefDiffConfig
    config: RefDiffConfig

    def __init__(self, config: PipelineConfig, *, hub: Any, cache: Any, meter: Any) -> None:
        super().__init__(config, hub=hub, cache=cache, meter=meter)
        self._extractors = ExtractorPool(hub, meter)
        self._encoders: dict[tuple[str, int], RegionClipEncoder] = {}
        self._lock = threading.Lock()

    @classmethod
    def default_config(cls, profile: str = "paper") -> RefDiffConfig:
        base = RefDiffConfig()
        overrides: dict[str, Any] = {
            "diffusion_model": model_for_profile(base.diffusion_model, profile),
            "clip_model": model_for_profile(base.clip_model, profile),
            "proposal_source": model_for_profile(base.proposal_source, profile),
        }
        if profile == "tiny":
            overrides["image_size"] = TINY_IMAGE_SIZE
        return RefDiffConfig.from_dict(overrides)

    # -- text ---------------------------------------------------------------------------------------
    def prompt_for(self, expression: str) -> str:
        """The SD prompt of an expression (the code appends ", ")."""
        return f"{expression}, " if self.config.peer_compat else expression

    def token_index(self, tokenizer: Any, expression: str, parsed: ParsedExpression) -> int:
        """The subject's last CLIP BPE position in :meth:`prompt_for`'s prompt."""
        prompt = self.prompt_for(expression)
        max_length = int(getattr(tokenizer, "model_max_length", 77))
        if parsed.subject_index < 0:
            return subject_token_index(tokenizer, prompt, len(expression), max_length=max_length)
        if self.config.peer_compat:
            return subject_token_index_peer(tokenizer, prompt, parsed.subject, max_length=max_length)
        end = subject_char_end(expression[:2000], parsed.tokens, parsed.subject_index)
        return subject_token_index(tokenizer, prompt, end, max_length=max_length)

    # -- generative ---------------------------------------------------------------------------------
    def _layers(self, bundle: Any) -> dict[str, int]:
        c = self.config
        size = latent_size(bundle, c.noising)
        available = [
            s
            for place, s in cross_attention_layers(bundle.unet, size).values()
            if place in c.attention_places
        ]
        wanted = c.attention_resolution or max(1, c.image_size // c.attention_downsample)
        return select_layers(bundle.unet, size, choose_resolution(available, wanted), c.attention_places)

    def _latent(self, ctx: ImageContext, bundle: Any, fingerprint: str) -> torch.Tensor:
        c = self.config.noising
        params = {"model": fingerprint, "image_size": c.image_size, "pad_value": c.pad_value, "seed": c.seed}

        def compute() -> torch.Tensor:
            with ctx.meter.stage("sd_encode"), ctx.meter.model_call(f"{self.config.diffusion_model}:vae"):
                return encode_latents(bundle, ctx.rgb, c)

        return ctx.cached("sd_latent", params, compute)

    def _map_params(
        self, fingerprint: str, layers: dict[str, int], prompt: str, token: int
    ) -> dict[str, Any]:
        noising = self.config.noising.to_dict()
        noising.pop("batch_expressions")
        return {
            "model": fingerprint,
            "noising": noising,
            "layers": sorted(layers),
            "kind": self.config.attention_kind,
            "prompt": prompt,
            "token": token,
        }

    def attention_maps(
        self, ctx: ImageContext, expressions: Sequence[str], parsed: Sequence[ParsedExpression]
    ) -> list[AttentionResult]:
        """Each expression's attention map, cached per (image, expression, settings); new ones batched."""
        c = self.config
        bundle = self.hub.get(c.diffusion_model)
        fingerprint = model_fingerprint(self.hub, c.diffusion_model)
        layers = self._layers(bundle)
        prompts = [self.prompt_for(e) for e in expressions]
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
            batch = c.batch_expressions
            for start in range(0, len(todo), batch):
                chunk = todo[start : start + batch]
                store = AttentionStore(layers, kinds=(c.attention_kind,))
                with ctx.meter.stage("sd_denoise"):
                    denoise_with_capture(
                        bundle,
                        latent,
                        [prompts[i] for i in chunk],
                        c.noising,
                        store,
                        meter=ctx.meter,
                        model_name=f"{c.diffusion_model}:unet",
                    )
                with ctx.meter.stage("attention_map"):
                    maps = subject_attention_map(
                        store,
                        [tokens[i] for i in chunk],
                        guidance_scale=c.guidance_scale,
                        kind=c.attention_kind,
                    )
                for j, i in enumerate(chunk):
                    value = maps[j].contiguous()
                    ctx.cache.put(ctx.key("refdiff_attention", params[i]), value)
                    squares[i] = value
        for i in missing:
            squares.setdefault(i, squares[first_of[(prompts[i], tokens[i])]])
        geometry = SquareGeometry(*ctx.size)
        return [
            AttentionResult(attention_to_image(squares[i], geometry), squares[i], tokens[i], prompts[i])
            for i in range(len(expressions))
        ]

    # -- proposals ----------------------------------------------------------------------------------
    def sam_proposals(self, ctx: ImageContext) -> Proposals:
        """The image's SAM proposals (generated once per image); the code's whole-image fallback in peer_compat."""
        proposals = cached_proposals(ctx, self.hub, self.config.proposal_source, self.config.amg_config)
        if len(proposals) == 0 and self.config.peer_compat:
            height, width = ctx.size
            return Proposals.from_masks(np.ones((1, height, width), dtype=bool))
        return proposals

    # -- discriminative -----------------------------------------------------------------------------
    def _encoder(self) -> RegionClipEncoder:
        bundle = self.hub.get(self.config.clip_model)
        key = (self.config.clip_model, id(bundle))
        with self._lock:
            encoder = self._encoders.get(key)
            if encoder is None:
                self._encoders = {k: v for k, v in self._encoders.items() if k[0] != key[0]}
                cfg = getattr(bundle, "preprocess_cfg", {}) or {}
                kwargs = {k: cfg[k] for k in ("mean", "std") if cfg.get(k) is not None}
                encoder = RegionClipEncoder(
                    bundle.model,
                    model_name=self.config.clip_model,
                    meter=self.meter,
                    max_masks_per_forward=self.config.max_masks_per_forward,
                    **kwargs,
                )
                self._encoders[key] = encoder
            return encoder

    def _region_params(
        self, encoder: RegionClipEncoder, proposals: Proposals, **extra: Any
    ) -> dict[str, Any]:
        return {
            "encoder": describe_encoder(encoder),
            "model": model_fingerprint(self.hub, self.config.clip_model),
            "masks": proposals_digest(proposals),
            **extra,
        }

    def soft_features(self, ctx: ImageContext, proposals: Proposals) -> torch.Tensor:
        encoder = self._encoder()
        params = self._region_params(encoder, proposals, max_side=self.config.soft_max_side)

        def compute() -> torch.Tensor:
            with ctx.meter.stage("clip_soft"):
                return encoder.soft_features(ctx.rgb, proposals.to_numpy(), self.config.soft_max_side)

        return ctx.cached("refdiff_soft", params, compute)

    def hard_features(self, ctx: ImageContext, proposals: Proposals, direction: str | None) -> torch.Tensor:
        encoder = self._encoder()
        params = self._region_params(encoder, proposals, ramp=direction, crop=self.config.hard_crop)

        def compute() -> torch.Tensor:
            with ctx.meter.stage("clip_hard"):
                image = positional_ramp(ctx.rgb, direction)
                return encoder.hard_features(image, proposals.to_numpy(), self.config.hard_crop)

        return ctx.cached("refdiff_hard", params, compute)

    def text_features(self, expression: str, parsed: ParsedExpression) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sentence, subject)`` unnormalised ``1 x D`` CLIP text features."""
        extractor = self._extractors.get(self.config.clip_model, VisualFeatureSettings())
        subject = parsed.subject or expression
        with self.meter.stage("text"):
            encoded = extractor.encode_texts([expression, subject])
        return encoded[:1], encoded[1:]

    # -- pipeline -----------------------------------------------------------------------------------
    def prepare(self, ctx: ImageContext) -> None:
        """Image-level work: the SD latent and, with SAM proposals, the proposals and their soft features."""
        c = self.config
        bundle = self.hub.get(c.diffusion_model)
        self._latent(ctx, bundle, model_fingerprint(self.hub, c.diffusion_model))
        if c.proposal_free:
            return
        proposals = self.sam_proposals(ctx)
        kept = proposals.filter(
            kept_for_scoring(proposals, max_proposals=c.max_proposals, min_area=c.resolved_min_area)
        )
        if len(kept) and c.use_discriminative:
            self.soft_features(ctx, kept)
            self.hard_features(ctx, kept, None)

    def predict(self, ctx: ImageContext, expressions: Sequence[str]) -> list[list[Candidate]]:
        expressions = list(expressions)
        if not expressions:
            return []
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
        keep = kept_for_scoring(proposals, max_proposals=limit, min_area=c.resolved_min_area)
        kept = proposals.filter(keep)
        s_g = np.zeros(n)
        hard = np.zeros(n)
        soft = np.zeros(n)
        fused = np.full(n, 0.0 if c.peer_compat else -np.inf)
        if len(kept):
            with self.meter.stage("scoring"):
                s_g_kept = generative_scores(attention.image_map, kept.to_tensor())
            hard_kept = soft_kept = None
            if c.use_discriminative:
                direction = ramp_direction(parsed.tokens, expression, peer_compat=c.peer_compat)
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
        if c.peer_compat:
            components["filtered"] = (~keep).astype(np.float64)
            return rank_candidates(proposals, fused, components)
        index = np.flatnonzero(keep)
        return rank_candidates(
            proposals.filter(index), fused[index], {name: v[index] for name, v in components.items()}
        )
