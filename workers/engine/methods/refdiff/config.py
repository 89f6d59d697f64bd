"""``RefDiffConfig`` and its ``NoisingConfig``: Ref-Diff's settings (the public code's config/refcoco.yaml unless
the field says). Torch-free. See ``workers.engine.methods.refdiff.pipeline`` and docs/METHODS.md#ref-diff."""

from __future__ import annotations

from dataclasses import dataclass

from workers.engine.blocks.proposals.config import AmgConfig
from workers.engine.core.config import Config, setting, sub_config
from workers.engine.core.errors import ConfigError

ATTENTION_SOURCE = "attention"
ATTENTION_KINDS = ("logits", "probs")
PLACES = ("down", "mid", "up")
HARD_CROP_CHOICES = ("shorter_side", "square")
FUSION_CHOICES = ("code", "paper")
THRESHOLD_MODES = ("value", "quantile")
RAMP_PRECISIONS = ("float32", "float64")
TOPK_TIES = ("first", "argpartition")
KEY_WORD_CASES = ("lowered", "typed")
ATTENTION_POSTPROCESS = ("float", "code")
POSITION_INTERPOLATIONS = ("exact", "scale_factor")
RAMP_MATCHES = ("word", "substring")
SUBJECT_CUTS = ("position", "first_substring")

#: The code's minimum proposal area per dataset (areas at or below it are filtered).
DATASET_MIN_AREA = {"refcoco": 10000, "refcoco+": 10000, "refcocog": 0}

#: The proposal-free thresholds: 5 %, 10 %, ..., 95 % of the map's range.
DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


@dataclass(frozen=True)
class NoisingConfig(Config):
    """How the generative pass runs (``workers.engine.methods.refdiff.noising``)."""

    config_name = "noising"

    image_size: int = setting(
        1024, low=64, high=2048, doc="side of the square SD input, px (a multiple of 8)"
    )
    steps: int = setting(20, low=1, high=1000, doc="DDIM timesteps of the full schedule")
    strength: float = setting(
        0.1, low=1e-6, high=1.0, doc="share of the schedule run (int(steps*strength) UNet steps)"
    )
    guidance_scale: float = setting(9.0, low=0.0, high=100.0, doc="classifier-free guidance")
    eta: float = setting(0.0, low=0.0, high=1.0, doc="DDIM eta (0: deterministic)")
    seed: int = setting(0, low=0, high=2**31 - 1, doc="seed of the VAE posterior sample and of the noise")
    pad_value: int = setting(
        0, low=0, high=255, doc="grey level of the square padding (0: black, as the code)"
    )
    negative_prompt: str = setting("", doc="the unconditional prompt")
    peer_noise_level: bool = setting(
        False, doc="noise one timestep above the first denoised one (the code's)"
    )
    batch_expressions: int = setting(4, low=1, high=64, doc="expressions per UNet batch (speed)")

    def check(self) -> None:
        if self.image_size % 8:
            raise ConfigError(f"config key 'image_size' must be a multiple of 8, got {self.image_size}")
        if int(self.steps * self.strength) < 1:
            raise ConfigError(
                f"diffusion strength {self.strength} of {self.steps} steps runs no denoising step "
                f"(int(steps * strength) must be >= 1)"
            )

    @property
    def denoise_steps(self) -> int:
        return min(int(self.steps * self.strength), self.steps)


@dataclass(frozen=True)
class RefDiffConfig(Config):
    """Settings of Ref-Diff (Ni et al., 2023)."""

    config_name = "refdiff"

    dataset: str = setting("refcoco", choices=tuple(DATASET_MIN_AREA), doc="preset of min_area")
    proposal_source: str = setting(
        "sam_vit_h",
        model="sam",
        extra_choices=(ATTENTION_SOURCE,),
        doc="SAM model, or 'attention' (proposal-free)",
    )
    amg: AmgConfig = sub_config(AmgConfig, doc="automatic mask generator settings")
    max_proposals: int | None = setting(10, low=1, high=10_000, doc="only the k largest proposals are scored")
    min_area: int | None = setting(
        None, low=0, high=100_000_000, doc="areas at or below are filtered (null: preset)"
    )
    attention_thresholds: tuple[float, ...] = setting(
        DEFAULT_THRESHOLDS, low=0.0, high=1.0, doc="proposal-free levels, fractions of the map's range"
    )
    attention_threshold_mode: str = setting(
        "value", choices=THRESHOLD_MODES, doc="levels as values or quantiles"
    )
    attention_max_proposals: int | None = setting(
        None, low=1, high=1000, doc="cap on proposal-free levels kept"
    )
    diffusion_model: str = setting("sd_1_5", model="diffusion", doc="Stable Diffusion model of the store")
    noising: NoisingConfig = sub_config(NoisingConfig, doc="the generative pass")
    attention_downsample: int = setting(32, low=1, high=1024, doc="query grid side = image_size / this")
    attention_resolution: int | None = setting(None, low=1, high=1024, doc="a query grid side instead")
    attention_places: tuple[str, ...] = setting(PLACES, choices=PLACES, doc="UNet blocks captured")
    attention_kind: str = setting("logits", choices=ATTENTION_KINDS, doc="pre-softmax logits (code) or probs")
    clip_model: str = setting("clip_vit_b_16", model="clip", doc="CLIP ViT of the store")
    use_discriminative: bool = setting(True, doc="fuse CLIP scores (false: s_g only)")
    hard_crop: str = setting(
        "shorter_side", choices=HARD_CROP_CHOICES, doc="hard crop resize (code: shorter_side)"
    )
    soft_max_side: int | None = setting(None, low=16, high=8192, doc="cap of the soft pass's image side")
    positional_ramp: bool = setting(True, doc="apply the left/right ramp to the hard crops")
    hard_text_weight: float = setting(1.0, low=-100.0, high=100.0, doc="sentence weight, hard text mix")
    hard_subject_weight: float = setting(0.0, low=-100.0, high=100.0, doc="subject weight, hard text mix")
    soft_text_weight: float = setting(0.5, low=-100.0, high=100.0, doc="sentence weight, soft text mix")
    soft_subject_weight: float = setting(0.5, low=-100.0, high=100.0, doc="subject weight, soft text mix")
    fusion: str = setting(
        "code", choices=FUSION_CHOICES, doc="'code': 0.7 hard + 0.3 soft + 0.05 s_g; 'paper'"
    )
    hard_weight: float = setting(0.7, low=-100.0, high=100.0, doc="fusion weight of hard")
    soft_weight: float = setting(0.3, low=-100.0, high=100.0, doc="fusion weight of soft")
    generative_weight: float = setting(0.05, low=-100.0, high=100.0, doc="fusion weight of s_g (code)")
    alpha: float = setting(0.1, low=0.0, high=1.0, doc="the paper's fusion weight of s_g")
    max_masks_per_forward: int = setting(32, low=1, high=1024, doc="CLIP crops / class tokens per forward")
    min_area_ratio: float = setting(
        0.0, low=0.0, high=1.0, doc="areas at or below this share of the image are filtered (code: 0)"
    )
    peer_compat: bool = setting(False, doc="reproduce the public code (each difference also has its own key)")
    key_word_case: str | None = setting(
        None,
        choices=KEY_WORD_CASES,
        doc="parse the key word from the 'lowered' sentence (ours) or as 'typed' (code) (null: peer_compat)",
    )
    subject_cut: str | None = setting(
        None,
        choices=SUBJECT_CUTS,
        doc="key-word token at its own 'position' (ours) or at the 'first_substring' match (code)",
    )
    prompt_suffix: bool | None = setting(
        None, doc="append ', ' to the SD prompt as the code (null: peer_compat)"
    )
    attention_postprocess: str | None = setting(
        None,
        choices=ATTENTION_POSTPROCESS,
        doc="map back to the image: 'float' bilinear (ours) or 'code' (uint8, PIL Lanczos; null: peer_compat)",
    )
    position_interpolation: str | None = setting(
        None,
        choices=POSITION_INTERPOLATIONS,
        doc="CLIP positional embedding on other grids: 'exact' or 'scale_factor' (code) (null: peer_compat)",
    )
    ramp_precision: str | None = setting(
        None, choices=RAMP_PRECISIONS, doc="positional ramp in float32 (ours) or float64 (code)"
    )
    ramp_match: str | None = setting(
        None, choices=RAMP_MATCHES, doc="left/right as whole 'word's (ours) or case-sensitive 'substring's"
    )
    topk_ties: str | None = setting(
        None, choices=TOPK_TIES, doc="equal areas at the k-th place: 'first' (ours) or 'argpartition' (code)"
    )
    filtered_score_zero: bool | None = setting(
        None, doc="filtered proposals keep score 0 and can win, as the code (null: peer_compat)"
    )
    empty_fallback: bool | None = setting(
        None, doc="no proposal: score the whole image as the code (null: peer_compat)"
    )

    def check(self) -> None:
        if not self.attention_thresholds:
            raise ConfigError("config key 'attention_thresholds' needs at least one threshold")
        if not self.attention_places:
            raise ConfigError(f"config key 'attention_places' must be a non-empty subset of {list(PLACES)}")

    def _pick(self, key: str, ours: object, code: object) -> object:
        value = getattr(self, key)
        if value is not None:
            return value
        return code if self.peer_compat else ours

    @property
    def resolved_key_word_case(self) -> str:
        return str(self._pick("key_word_case", "lowered", "typed"))

    @property
    def resolved_subject_cut(self) -> str:
        return str(self._pick("subject_cut", "position", "first_substring"))

    @property
    def resolved_prompt_suffix(self) -> bool:
        return bool(self._pick("prompt_suffix", False, True))

    @property
    def resolved_attention_postprocess(self) -> str:
        return str(self._pick("attention_postprocess", "float", "code"))

    @property
    def resolved_position_interpolation(self) -> str:
        return str(self._pick("position_interpolation", "exact", "scale_factor"))

    @property
    def resolved_ramp_precision(self) -> str:
        return str(self._pick("ramp_precision", "float32", "float64"))

    @property
    def resolved_ramp_match(self) -> str:
        return str(self._pick("ramp_match", "word", "substring"))

    @property
    def resolved_topk_ties(self) -> str:
        return str(self._pick("topk_ties", "first", "argpartition"))

    @property
    def resolved_filtered_score_zero(self) -> bool:
        return bool(self._pick("filtered_score_zero", False, True))

    @property
    def resolved_empty_fallback(self) -> bool:
        return bool(self._pick("empty_fallback", False, True))

    @property
    def resolved_min_area(self) -> int:
        return int(self.min_area) if self.min_area is not None else DATASET_MIN_AREA[self.dataset]

    @property
    def proposal_free(self) -> bool:
        return self.proposal_source == ATTENTION_SOURCE

    @property
    def resolved_noising(self) -> NoisingConfig:
        """The noising settings with the code's noise level when ``peer_compat``."""
        if self.peer_compat and not self.noising.peer_noise_level:
            return self.noising.replace(peer_noise_level=True)
        return self.noising
