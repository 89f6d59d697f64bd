"""``ClipFeatureConfig``: how CLIP features of masks are computed, and CLIP's normalisation constants. Torch-free.

See ``workers.engine.blocks.clip.features`` for what each setting does and docs/METHODS.md#global-local-clip.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.engine.core.config import Config, setting

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

PREPROCESSING_CHOICES = ("reference", "clean")
BACKGROUND_CHOICES = ("mean", "black")


@dataclass(frozen=True)
class ClipFeatureConfig(Config):
    """Settings of the CLIP mask features (global-context and local-context)."""

    config_name = "features"

    preprocessing: str = setting(
        "reference",
        choices=PREPROCESSING_CHOICES,
        doc="'reference': the Global-Local CLIP code's image handling, quirks included; 'clean': CLIP's own",
    )
    mask_from_block: int | None = setting(
        None, low=0, high=64, doc="first ViT block whose patch tokens are masked (null: 3/4 of the depth)"
    )
    local_background: str = setting(
        "mean", choices=BACKGROUND_CHOICES, doc="what replaces the pixels outside a mask"
    )
    antialias: bool | None = setting(None, doc="antialias resizes (null: off for reference, on for clean)")
    shorter_side: int = setting(800, low=16, high=4096, doc="the reference path's shorter image side, px")
    max_masks_per_forward: int = setting(
        32, low=1, high=1024, doc="largest batch of masks in one forward (speed)"
    )
    max_forward_mb: float | None = setting(
        None, low=1e-6, high=1e6, doc="cap on the estimated activation memory of one forward, MiB (speed)"
    )

    @property
    def use_antialias(self) -> bool:
        return self.antialias if self.antialias is not None else self.preprocessing == "clean"
