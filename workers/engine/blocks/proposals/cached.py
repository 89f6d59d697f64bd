"""An image's automatic masks through the per-image cache, and the post-filters (docs/METHODS.md#post-filters).

:func:`cached_proposals` runs SAM / MobileSAM's automatic generator once per (image, model weights, generator
settings). The generator's whole-image SAM embedding goes into the same cache under ``"sam_embedding"``
(:func:`embedding_params`, the key ``Engine.refine`` reads), so a refine click after proposals runs only the
prompt decoder; an embedding already cached (a click came first) is used instead of running the encoder.
Post-filters (:func:`filter_proposals`) are cheap and run per call, so pipelines with different filters share
one generator run.

A generator run is marked in progress beside its disk cache entry (``workers.engine.core.inflight``): a
process that needs the same proposals while another (e.g. the background ``prepare_image``) generates them
waits for that run, reporting stage ``waiting`` with the other's points done, instead of starting the same
work, as long as the other run is live and near its end; otherwise it generates them itself.
"""

from __future__ import annotations

from typing import Any

from workers.engine.blocks.masks import Proposals
from workers.engine.blocks.proposals.config import AmgConfig
from workers.engine.blocks.proposals.fast_amg import FastMaskGenerator
from workers.engine.blocks.proposals.filters import drop_overlapping, drop_small, keep_largest
from workers.engine.blocks.proposals.refine import ImageEmbedding
from workers.engine.core.cache import ImageContext, cache_params
from workers.engine.core.inflight import Marker, marking, wait_for_peer

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

    Progress goes to ``ctx.report("proposals", points_done, points_total)`` and the meter's listeners
    (``meter.progress("proposals", done, total, "points")``) between decoder batches; while waiting for
    another process's run of the same proposals, ``("waiting", its points done, its points total)``.

    Raises:
        ModelStoreError: ``source`` is not in the model store (the message names the command that gets it).
        Whatever ``ctx.progress`` or a meter listener raises (cancellation); no proposals are cached then
            (the embedding, cached before the first decoder batch, stays).
    """

    def report(stage: str, done: int, total: int) -> None:
        ctx.report(stage, done, total)
        ctx.meter.progress(stage, done, total, "points")

    def compute(marker: Marker | None) -> dict[str, Any]:
        def on_points(done: int, total: int) -> None:
            report("proposals", done, total)
            if marker is not None:
                marker.beat(done, total)

        sam = hub.get(source)
        embedding_key = ctx.key(EMBEDDING_KIND, embedding_params(hub, source))
        state = ctx.cache.get(embedding_key)
        embedding = ImageEmbedding.from_state(state) if state is not None else None
        generator = FastMaskGenerator(sam, amg)

        def keep_embedding(whole: ImageEmbedding) -> None:
            # At once, before the decoder batches: a refine click in another worker process (the disk cache)
            # or after a cancellation runs only the prompt decoder, not a second encoder pass.
            if state is None:
                ctx.cache.put(embedding_key, whole.to_state())

        with ctx.meter.stage("proposals"), ctx.meter.model_call(source):
            proposals, _whole = generator.generate(
                ctx.rgb,
                embedding=embedding,
                on_progress=on_points,
                on_embedding=keep_embedding,
            )
        if generator.stats.encoder_calls:
            ctx.meter.count(f"{source}:encoder", generator.stats.encoder_calls)
        return proposals.to_state()

    key = ctx.key("proposals", proposal_params(hub, source, amg))
    state = ctx.cache.get(key)
    if state is None:
        entry = ctx.cache.entry_path(key)
        state = wait_for_peer(
            entry,
            lambda: ctx.cache.get(key) if ctx.cache.contains(key) else None,
            on_wait=lambda done, total: report("waiting", done, total),
        )
        if state is None:
            with marking(entry) as marker:
                state = compute(marker)
                ctx.cache.put(key, state)  # before the marker goes: a waiter then finds the value
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
