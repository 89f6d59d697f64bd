"""Mask proposals: SAM / MobileSAM automatic masks, the METHODS.md post-filters, and prompt refine.

Public API::

    proposals = generate_proposals(sam, rgb, AmgConfig(points_per_side=16))   # -> Proposals
    proposals = drop_small(proposals, 2000)
    proposals = drop_overlapping(proposals, 0.4, peer_compat=False)
    proposals = keep_largest(proposals, 10)

    refiner = PromptRefiner(sam)
    embedding = refiner.set_image(rgb)         # or refiner.set_embedding(cached_embedding)
    mask, score = refiner.refine([(x, y)], [1])
"""

from workers.engine.proposals.amg import (
    TAS_AMG_CONFIG,
    AmgConfig,
    generate_proposals,
    is_mobile_sam,
    postprocess_small_regions,
    remove_small_regions,
)
from workers.engine.proposals.filters import drop_overlapping, drop_small, keep_largest, overlap_over_smaller
from workers.engine.proposals.refine import ImageEmbedding, PromptRefiner

__all__ = [
    "TAS_AMG_CONFIG",
    "AmgConfig",
    "ImageEmbedding",
    "PromptRefiner",
    "drop_overlapping",
    "drop_small",
    "generate_proposals",
    "is_mobile_sam",
    "keep_largest",
    "overlap_over_smaller",
    "postprocess_small_regions",
    "remove_small_regions",
]
