"""``AmgConfig``: every setting of SAM's automatic mask generator, as data with bounds. Torch-free.

Defaults are segment-anything's (tuned for ViT-H). The upper bounds keep one job's work bounded: 64 points per
side is 4,096 prompts per crop, four times SAM's default density.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.engine.core.config import Config, setting
from workers.engine.core.errors import ConfigError


@dataclass(frozen=True)
class AmgConfig(Config):
    """Settings of SAM's automatic mask generator (segment-anything's defaults)."""

    config_name = "amg"

    points_per_side: int = setting(32, low=1, high=64, doc="the prompt grid has points_per_side ** 2 points")
    points_per_batch: int = setting(64, low=1, high=1024, doc="grid points through the mask decoder at once")
    pred_iou_thresh: float = setting(
        0.88, low=0.0, high=1.0, doc="keep masks whose predicted IoU is at least this"
    )
    stability_score_thresh: float = setting(
        0.95, low=0.0, high=1.0, doc="keep masks whose stability score is at least this"
    )
    stability_score_offset: float = setting(
        1.0, low=0.0, high=10.0, doc="logit offset used to compute the stability score"
    )
    box_nms_thresh: float = setting(
        0.7, low=0.0, high=1.0, doc="box IoU above which duplicates are suppressed"
    )
    crop_n_layers: int = setting(0, low=0, high=3, doc="extra layers of image crops (0: whole image only)")
    crop_nms_thresh: float = setting(0.7, low=0.0, high=1.0, doc="box IoU for duplicates across crops")
    crop_overlap_ratio: float = setting(
        512 / 1500, low=0.0, high=0.99, doc="overlap of neighbouring crops, a fraction of the image side"
    )
    crop_n_points_downscale_factor: int = setting(
        1, low=1, high=16, doc="grid points per side are divided by this per crop layer"
    )
    min_mask_region_area: int = setting(
        0, low=0, high=1_000_000, doc="fill holes and remove islands smaller than this many pixels (0: off)"
    )
    # Speed settings of the engine's generator (not segment-anything's; off by default: the stock output).
    skip_covered_points: bool = setting(
        False,
        doc="coarse-to-fine point pruning: skip a grid point inside a decoded neighbour's segment that looks "
        "alike (not the stock output; docs/perf/amg.md)",
    )
    skip_similarity: float = setting(
        0.9,
        low=-1.0,
        high=1.0,
        doc="cosine similarity of the image embeddings at the two points needed to skip (skip_covered_points)",
    )
    decoder_precision: str = setting(
        "float32",
        choices=("float32", "bfloat16"),
        doc="precision of the prompt decoder's per-prompt image-side work (bfloat16: not the stock output)",
    )

    def check(self) -> None:
        """The deepest crop layer needs at least one grid point per side.

        segment-anything builds layer ``i``'s grid with ``points_per_side // crop_n_points_downscale_factor ** i``
        points per side; zero divides by zero inside the generator.
        """
        deepest = self.points_per_side // self.crop_n_points_downscale_factor**self.crop_n_layers
        if deepest < 1:
            raise ConfigError(
                f"config keys 'points_per_side', 'crop_n_points_downscale_factor' and 'crop_n_layers': crop layer "
                f"{self.crop_n_layers} would get {self.points_per_side} // {self.crop_n_points_downscale_factor}"
                f"**{self.crop_n_layers} = 0 points per side; lower the factor or the layers, or raise "
                "points_per_side"
            )

    def work(self) -> dict[str, int]:
        """What one image costs under these settings, before any model runs.

        ``embeddings``: image-encoder passes (the whole image plus every crop: layer ``i`` has ``4 ** i``
        crops); ``prompts``: grid points through the mask decoder (``(points_per_side // f ** i) ** 2`` per
        crop of layer ``i``); ``decoder_batches``: ``ceil(prompts / points_per_batch)`` per crop, summed.
        """
        embeddings = prompts = batches = 0
        for layer in range(self.crop_n_layers + 1):
            crops = 4**layer
            per_crop = (self.points_per_side // self.crop_n_points_downscale_factor**layer) ** 2
            embeddings += crops
            prompts += crops * per_crop
            batches += crops * -(-per_crop // self.points_per_batch)
        return {"embeddings": embeddings, "prompts": prompts, "decoder_batches": batches}


#: The proposal settings of TAS's public code (docs/METHODS.md#generator-settings-per-method).
TAS_AMG_CONFIG = AmgConfig(
    points_per_side=8, pred_iou_thresh=0.7, stability_score_thresh=0.7, min_mask_region_area=800
)
