"""An image's automatic masks through the per-image cache, and the post-filters (docs/METHODS.md#post-filters).

:func:`cached_proposals` runs SAM / MobileSAM's automatic generator once per (image, model weights, generator
settings). Post-filters (:func:`filter_proposals`) are cheap and run per call, so pipelines with different
filters share one generator run.
"""

from __future__ import annotations

from typing import Any

from workers.engine.blocks.masks import Proposals
from workers.engine.blocks.proposals.amg import generate_proposals
from workers.engine.blocks.proposals.config import AmgConfig
from workers.engine.blocks.proposals.filters import drop_overlapping, drop_small, keep_largest
from workers.engine.core.cache import ImageContext, cache_params


def proposal_params(hub: Any, source: str, amg: AmgConfig) -> dict[str, Any]:
    """What a generator run depends on: the SAM model's weights and the generator settings (cache key)."""
    return cache_params(models={"sam": hub.fingerprint(source)}, settings=amg, source=source)


def cached_proposals(ctx: ImageContext, hub: Any, source: str, amg: AmgConfig) -> Proposals:
    """Automatic masks of ``ctx``'s image by SAM model ``source`` under ``amg``, generated once per image.

    Raises:
        ModelStoreError: ``source`` is not in the model store (the message names the command that gets it).
    """

    def compute() -> dict[str, Any]:
        sam = hub.get(source)
        with ctx.meter.stage("proposals"), ctx.meter.model_call(source):
            return generate_proposals(sam, ctx.rgb, amg).to_state()

    state = ctx.cached("proposals", proposal_params(hub, source, amg), compute)
    return Proposals.from_state(state)


def filter_proposals(
    proposals: Proposals,
    *,
    min_area: int = 0,
    max_overlap: float | None = None,
    overlap_peer_compat: bool = False,
    max_proposals: int | None = None,
) -> Proposals:
    """The post-filters in order: minimum area (px), overlap over the smaller area (the smaller of two masks
    overlapping by more than ``max_overlap`` is dropped; ``overlap_peer_compat``: TAS's non-greedy variant),
    then the ``max_proposals`` largest."""
    if min_area > 0:
        proposals = drop_small(proposals, min_area)
    if max_overlap is not None:
        proposals = drop_overlapping(proposals, max_overlap, peer_compat=overlap_peer_compat)
    if max_proposals is not None:
        proposals = keep_largest(proposals, max_proposals)
    return proposals
