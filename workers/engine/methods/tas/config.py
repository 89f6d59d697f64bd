"""``TasConfig``: TAS's settings, the public code's constants with its plain bugs fixed. Torch-free.

``peer_compat`` and the keys after it select, one by one, the public code's behaviour where our default
differs (see ``workers.engine.methods.tas.pipeline`` and docs/METHODS.md#tas).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.engine.blocks.captions.config import CaptionConfig
from workers.engine.blocks.clip.config import ClipFeatureConfig
from workers.engine.blocks.proposals.config import TAS_AMG_CONFIG, AmgConfig
from workers.engine.core.config import Config, setting, sub_config
from workers.engine.core.errors import ConfigError
from workers.engine.methods.tas.vocabulary import (
    DEFAULT_VOCABULARY,
    MATCH_CHOICES,
    TAS_CODE_VOCABULARY,
    check_vocabulary,
)


@dataclass(frozen=True)
class SynonymRule:
    """When two nouns count as near-synonyms (``workers.engine.methods.tas.lexicon``).

    Attributes:
        min_shared_senses: pairs of senses over the similarity threshold needed (TAS: 3).
        min_path_similarity: a pair counts when its path similarity is strictly above this (TAS: 0.9).
        same_lemma: equal lemmas are near-synonyms whatever WordNet says (ours; TAS: no).
        nouns_only: compare noun senses only (ours; TAS compares every part of speech).
        use_wordnet: ``False`` compares lemmas only (the fallback without WordNet).
    """

    min_shared_senses: int = 3
    min_path_similarity: float = 0.9
    same_lemma: bool = True
    nouns_only: bool = True
    use_wordnet: bool = True


NORMALIZATION_CHOICES = ("minmax", "none")
LEXICON_FALLBACK_CHOICES = ("error", "exact")
SYNONYM_NOUN_CHOICES = ("head", "first")
SYNONYM_TAG_CHOICES = ("coarse", "penn")
RECTIFIER_RULES = ("directions", "code")
NOUN_PHRASE_RULES = ("normalized", "code")
SCORE_PRECISIONS = ("float64", "float32")


@dataclass(frozen=True)
class TasConfig(Config):
    """Settings of TAS (Suo et al., EMNLP Findings 2023)."""

    config_name = "tas"

    clip_model: str = setting("clip_vit_b_32", model="clip", doc="CLIP model of the store")
    captioner_model: str = setting(
        "blip2_opt_2_7b", model="captioner", doc="image-to-text captioner of the store"
    )
    proposal_source: str = setting("sam_vit_h", model="sam", doc="SAM model of the store proposing masks")
    amg: AmgConfig = sub_config(
        AmgConfig, default=TAS_AMG_CONFIG, doc="automatic mask generator settings (TAS: 8 points per side)"
    )
    min_area: int = setting(2000, low=0, high=100_000_000, doc="drop masks under this many pixels")
    max_overlap: float | None = setting(
        0.4, low=0.0, high=1.0, doc="of two masks overlapping by more than this share of the smaller, drop it"
    )
    max_proposals: int | None = setting(None, low=1, high=10_000, doc="keep only the largest k masks")
    lambda_p: float = setting(0.1, low=0.0, high=100.0, doc="weight of P in S_v + lambda_p P - lambda_n N")
    lambda_n: float = setting(0.7, low=0.0, high=100.0, doc="weight of N")
    score_scale: float = setting(100.0, low=1e-9, high=10_000.0, doc="factor of every cosine")
    normalization: str = setting("minmax", choices=NORMALIZATION_CHOICES, doc="before the softmax")
    softmax: bool = setting(True, doc="turn the normalised scores into probabilities over the masks")
    negative_template: str = setting("a photo of {}", doc="the prompt of a negative phrase ({} once)")
    synonym_min_shared_senses: int = setting(3, low=1, high=100, doc="WordNet near-synonym rule")
    synonym_min_path_similarity: float = setting(0.9, low=0.0, high=1.0, doc="WordNet near-synonym rule")
    lexicon_fallback: str = setting(
        "error", choices=LEXICON_FALLBACK_CHOICES, doc="without WordNet: 'error' or 'exact' (lemmas only)"
    )
    rectifier: bool = setting(True, doc="run the spatial rectifier")
    spatial_vocabulary: dict[str, Any] | None = setting(
        None, doc="direction -> words; null: the code's lists in peer_compat, ours otherwise"
    )
    caption: CaptionConfig = sub_config(CaptionConfig, doc="caption generation settings")
    max_masks_per_forward: int = setting(32, low=1, high=1024, doc="CLIP batch size (speed)")
    peer_compat: bool = setting(False, doc="reproduce the public code (each difference also has its own key)")
    overlap_peer_compat: bool | None = setting(
        None, doc="the code's non-greedy overlap filter (null: peer_compat)"
    )
    spatial_match: str | None = setting(
        None, choices=MATCH_CHOICES, doc="'substring' (code) or 'word' direction matching (null: peer_compat)"
    )
    rectifier_skip_punctuated: bool | None = setting(
        None, doc="skip the rectifier on a sentence ending in punctuation, as the code (null: peer_compat)"
    )
    synonym_noun: str | None = setting(
        None,
        choices=SYNONYM_NOUN_CHOICES,
        doc="'first' (code) or 'head' noun of a phrase (null: peer_compat)",
    )
    synonym_same_lemma: bool | None = setting(
        None, doc="equal lemmas are near-synonyms (ours; null: peer_compat)"
    )
    synonym_nouns_only: bool | None = setting(None, doc="noun senses only (ours; null: peer_compat)")
    nan_guard: bool | None = setting(None, doc="guard the empty negative list (ours; null: peer_compat)")
    rectifier_rule: str | None = setting(
        None,
        choices=RECTIFIER_RULES,
        doc="'directions' (ours: any direction word) or 'code' (gated by the entity parse) (null: peer_compat)",
    )
    synonym_tags: str | None = setting(
        None,
        choices=SYNONYM_TAG_CHOICES,
        doc="nouns by spaCy's 'coarse' POS (ours) or 'penn' tags of NLTK tokens (code) (null: peer_compat)",
    )
    score_precision: str | None = setting(
        None, choices=SCORE_PRECISIONS, doc="raw / min-max / softmax in float64 (ours) or float32 (code)"
    )
    noun_phrase_rule: str | None = setting(
        None,
        choices=NOUN_PHRASE_RULES,
        doc="target noun phrase of the 'normalized' sentence (ours) or the 'code''s (null: peer_compat)",
    )

    def check(self) -> None:
        if self.negative_template.count("{}") != 1:
            raise ConfigError(
                f"config key 'negative_template' must hold '{{}}' once (where the phrase goes), "
                f"got {self.negative_template!r}"
            )
        if self.spatial_vocabulary is not None:
            try:
                check_vocabulary(self.spatial_vocabulary)
            except ValueError as exc:
                raise ConfigError(f"config key 'spatial_vocabulary': {exc}") from exc

    # -- the settings each mode resolves to --------------------------------------------------------
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
    def resolved_rectifier_rule(self) -> str:
        return str(self._pick("rectifier_rule", "directions", "code"))

    @property
    def resolved_synonym_tags(self) -> str:
        return str(self._pick("synonym_tags", "coarse", "penn"))

    @property
    def resolved_score_precision(self) -> str:
        return str(self._pick("score_precision", "float64", "float32"))

    @property
    def resolved_noun_phrase_rule(self) -> str:
        return str(self._pick("noun_phrase_rule", "normalized", "code"))

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
    def crop_features(self) -> ClipFeatureConfig:
        """CLIP crop features as TAS: the mask on black, cut to its box, padded square, CLIP's normalisation."""
        return ClipFeatureConfig(
            preprocessing="clean", local_background="black", max_masks_per_forward=self.max_masks_per_forward
        )
