"""An image's automatic masks through the per-image cache, and the post-filters (docs/METHODS.md#post-filters).

:func:`cached_proposals` runs SAM / MobileSAM's automatic generator once per (image, model weights, generator
settings). The generator's whole-image SAM embedding goes into the same cache under ``"sam_embedding"``
(:func:`embedding_params`, the key ``Engine.refine`` reads), so a refine click after proposals runs only the
prompt decoder; an embedding already cached (a click came first) is used instead of running the encoder.
Post-filters (:func:`filter_proposals`) are cheap and run per call, so pipelines with different filters share
one generator run.
"""

from __future__ import annotations

from typing import Any

from workers.engine.blocks.masks import Proposals
from workers.engine.blocks.proposals.config import AmgConfig
from workers.engine.blocks.proposals.fast_amg import FastMaskGenerator
from workers.engine.blocks.proposals.filters import drop_overlapping, drop_small, keep_largest
from workers.engine.blocks.proposals.refine import ImageEmbedding
from workers.engine.core.cache import ImageContext, cache_params

#: Cache kind of a SAM model's whole-image embedding (``ImageEmbedding.to_state()``).
EMBEDDING_KIND = "sam_embedding"


def proposal_params(hub: Any, source: str, amg: AmgConfig) -> dict[str, Any]:
    """What a generator run depends on: the SAM model's weights and the generator settings (cache key)."""
    return cache_params(models={"sam": hub.fingerprint(source)}, settings=amg, source=source)


def embedding_params(hub: Any, source: str) -> dict[str, Any]:
    """What SAM model ``source``'s image embedding depends on: its weights (cache key)."""
    return cache_params(models={"sam": hub.fingerprint(source)})


def proposals_cached(ctx: ImageContext, hub: Any, source: str, amg: AmgConfig) -> bool:
    """Whether ``ctx``'s image already has its proposals by ``source`` under ``amg`` in the cache."""
    return ctx.cache.contains(ctx.key("proposals", proposal_params(hub, source, amg)))


def cached_proposals(ctx: ImageContext, hub: Any, source: str, amg: AmgConfig) -> Proposals:
    """Automatic masks of ``ctx``'s image by SAM model ``source`` under ``amg``, generated once per image.

    Progress goes to ``ctx.report("proposals", points_done, points_total)`` between decoder batches.

    Raises:
        ModelStoreError: ``source`` is not in the model store (the message names the command that gets it).
        Whatever ``ctx.progress`` raises (cancellation); nothing is cached then.
    """

    def compute() -> dict[str, Any]:
        sam = hub.get(source)
        embedding_key = ctx.key(EMBEDDING_KIND, embedding_params(hub, source))
        state = ctx.cache.get(embedding_key)
        embedding = ImageEmbedding.from_state(state) if state is not None else None
        generator = FastMaskGenerator(sam, amg)
        with ctx.meter.stage("proposals"), ctx.meter.model_call(source):
            proposals, whole = generator.generate(
                ctx.rgb,
                embedding=embedding,
                on_progress=lambda done, total: ctx.report("proposals", done, total),
            )
        if generator.stats.encoder_calls:
            ctx.meter.count(f"{source}:encoder", generator.stats.encoder_calls)
        if state is None:
            ctx.cache.put(embedding_key, whole.to_state())
        return proposals.to_state()

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
