"""``GlobalLocalConfig``: Global-Local CLIP's settings with the paper's / public code's defaults. Torch-free.

See ``workers.engine.methods.global_local.pipeline`` and docs/METHODS.md#global-local-clip.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.engine.blocks.clip.config import ClipFeatureConfig
from workers.engine.blocks.proposals.config import AmgConfig
from workers.engine.core.config import Config, setting, sub_config
from workers.engine.core.errors import ConfigError

#: The visual mix weight per dataset (the paper's values).
DATASET_V = {"refcoco": 0.95, "refcoco+": 0.95, "refcocog": 0.85}


@dataclass(frozen=True)
class GlobalLocalConfig(Config):
    """Settings of Global-Local CLIP (Yu et al., CVPR 2023)."""

    config_name = "global_local"

    dataset: str = setting(
        "refcoco", choices=tuple(DATASET_V), doc="preset of v (refcoco, refcoco+: 0.95; refcocog: 0.85)"
    )
    v: float | None = setting(
        None, low=0.0, high=1.0, doc="global weight of the visual mix (null: the dataset preset)"
    )
    r: float = setting(0.5, low=0.0, high=1.0, doc="noun-phrase weight of the text mix")
    clip_model: str = setting("clip_vit_b_32", model="clip", doc="CLIP model of the store (ViT or RN50)")
    proposal_source: str = setting("sam_vit_h", model="sam", doc="SAM model of the store proposing masks")
    amg: AmgConfig = sub_config(AmgConfig, doc="automatic mask generator settings")
    min_area: int = setting(0, low=0, high=100_000_000, doc="drop proposals smaller than this, px (0: off)")
    max_overlap: float | None = setting(
        None,
        low=0.0,
        high=1.0,
        doc="of two masks overlapping by more than this share of the smaller, drop it",
    )
    overlap_peer_compat: bool = setting(False, doc="TAS's non-greedy overlap filter")
    max_proposals: int | None = setting(None, low=1, high=10_000, doc="keep only the largest k proposals")
    peer_compat: bool = setting(
        True, doc="reproduce the public code (needs features.preprocessing 'reference')"
    )
    features: ClipFeatureConfig = sub_config(ClipFeatureConfig, doc="CLIP mask feature settings")
    normalize_before_mix: bool = setting(False, doc="mix unit-normalised global and local features")
    score_scale: float = setting(100.0, low=0.0, high=10_000.0, doc="factor in front of the cosine")

    def check(self) -> None:
        if self.peer_compat and self.features.preprocessing != "reference":
            raise ConfigError(
                "config key 'peer_compat' is true, which needs features.preprocessing 'reference'"
            )
        if self.peer_compat and self.features.antialias:
            raise ConfigError(
                "config key 'peer_compat' is true, which needs features.antialias off (the public code's)"
            )

    @property
    def resolved_v(self) -> float:
        return float(self.v) if self.v is not None else DATASET_V[self.dataset]
