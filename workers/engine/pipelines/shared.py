"""Image-level building blocks every pipeline shares: cached proposals, cached CLIP mask features, ranking.

- :func:`cached_proposals`: SAM / MobileSAM automatic masks of an image, cached per (image, model
  checksum, generator settings). Post-filters (:func:`filter_proposals`) are cheap and run per call, so
  pipelines with different filters share one generator run.
- :func:`cached_visual_features`: global- and local-context CLIP features of a set of masks, cached per
  (image, CLIP model checksum, feature settings, the masks' own digest).
- :func:`rank_candidates`: turn per-mask scores into ranked :class:`Candidate` objects.

Cache keys carry each model's file checksums (:func:`model_fingerprint`), so re-made tiny weights or a
re-fetched model never read features made by the old weights.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from workers.engine.cache import config_hash
from workers.engine.clip_features import ClipFeatureExtractor, VisualFeatureSettings
from workers.engine.masks import Proposals
from workers.engine.meter import Meter
from workers.engine.pipelines.base import ImageContext
from workers.engine.proposals import AmgConfig, drop_overlapping, drop_small, generate_proposals, keep_largest
from workers.engine.types import Candidate

SAM_SOURCES = ("mobile_sam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "sam_tiny")


def model_fingerprint(hub: Any, name: str) -> str:
    """A short hash of model ``name``'s stored files (sha256 per file); the name alone when unknown."""
    store = getattr(hub, "store", None)
    if store is None:
        return name
    try:
        files = store.entry(name).files
    except Exception:  # a hub without a manifest entry (tests' in-memory models)
        return name
    return config_hash({"name": name, "files": dict(files)})


# -- proposals ------------------------------------------------------------------------------------------


def proposal_params(hub: Any, source: str, amg: AmgConfig) -> dict[str, Any]:
    """What a generator run depends on (the cache key's parameters)."""
    return {"source": source, "model": model_fingerprint(hub, source), "amg": amg.to_dict()}


def cached_proposals(ctx: ImageContext, hub: Any, source: str, amg: AmgConfig) -> Proposals:
    """Automatic masks of ``ctx``'s image by SAM model ``source`` under ``amg``, generated once per image."""

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
    """METHODS.md post-filters in order: minimum area, overlap over the smaller area, the k largest."""
    if min_area > 0:
        proposals = drop_small(proposals, min_area)
    if max_overlap is not None:
        proposals = drop_overlapping(proposals, max_overlap, peer_compat=overlap_peer_compat)
    if max_proposals is not None:
        proposals = keep_largest(proposals, max_proposals)
    return proposals


def proposals_digest(proposals: Proposals) -> str:
    """A hash of the masks themselves (size and RLE counts), identifying a set of proposals."""
    digest = hashlib.sha256(repr(proposals.image_size).encode())
    for rle in proposals.rles:
        digest.update(b"|")
        digest.update(rle["counts"].encode("ascii"))
    return digest.hexdigest()[:16]


# -- CLIP features -------------------------------------------------------------------------------------


class ExtractorPool:
    """One :class:`ClipFeatureExtractor` per (CLIP model name, settings), so text features stay cached.

    When the hub hands out a different model object for a name (it evicted and reloaded it), the
    extractor is rebuilt on the new one.
    """

    def __init__(self, hub: Any, meter: Meter) -> None:
        self.hub = hub
        self.meter = meter
        self._extractors: dict[tuple[str, str], ClipFeatureExtractor] = {}
        self._lock = threading.Lock()

    def get(self, model_name: str, settings: VisualFeatureSettings) -> ClipFeatureExtractor:
        bundle = self.hub.get(model_name)
        key = (model_name, config_hash(settings.to_dict()))
        with self._lock:
            extractor = self._extractors.get(key)
            if extractor is None or extractor.model is not bundle.model:
                for old in [
                    k
                    for k, e in self._extractors.items()
                    if k[0] == model_name and e.model is not bundle.model
                ]:
                    del self._extractors[old]
                extractor = extractor_from_bundle(bundle, model_name, settings, self.meter)
                self._extractors[key] = extractor
            return extractor


def extractor_from_bundle(
    bundle: Any, model_name: str, settings: VisualFeatureSettings, meter: Meter
) -> ClipFeatureExtractor:
    """A :class:`ClipFeatureExtractor` on a store ``ClipBundle`` (model, tokenizer, preprocess_cfg)."""
    cfg = getattr(bundle, "preprocess_cfg", {}) or {}
    kwargs: dict[str, Any] = {}
    if cfg.get("mean") is not None:
        kwargs["mean"] = cfg["mean"]
    if cfg.get("std") is not None:
        kwargs["std"] = cfg["std"]
    return ClipFeatureExtractor(
        bundle.model, bundle.tokenizer, model_name=model_name, settings=settings, meter=meter, **kwargs
    )


def cached_visual_features(
    ctx: ImageContext, extractor: ClipFeatureExtractor, proposals: Proposals, fingerprint: str
) -> dict[str, torch.Tensor]:
    """``{"global": N x D, "local": N x D}`` float32 CPU features of ``proposals``, computed once per image."""
    params = {
        "extractor": extractor.describe(),
        "model": fingerprint,
        "masks": proposals_digest(proposals),
    }

    def compute() -> dict[str, torch.Tensor]:
        masks = proposals.to_tensor()
        with ctx.meter.stage("clip_visual"):
            return extractor.visual_features(ctx.rgb, masks)

    return ctx.cached("clip_visual", params, compute)


# -- ranking -------------------------------------------------------------------------------------------


def rank_candidates(
    proposals: Proposals, scores: Sequence[float] | np.ndarray, components: Mapping[str, Sequence[float]]
) -> list[Candidate]:
    """Candidates of every proposal, best score first (ties: earlier proposal first; NaN last).

    Args:
        proposals: N masks.
        scores: N final scores.
        components: name -> N values, copied into each candidate's ``components``.
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.shape[0] != len(proposals):
        raise ValueError(f"{values.shape[0]} scores for {len(proposals)} proposals")
    order_key = np.where(np.isnan(values), -np.inf, values)
    order = np.lexsort((np.arange(len(values)), -order_key))
    parts = {name: np.asarray(v, dtype=np.float64).reshape(-1) for name, v in components.items()}
    candidates = []
    for rank, index in enumerate(order):
        box = proposals.bbox_xyxy[index]
        candidates.append(
            Candidate(
                rank=rank,
                rle=dict(proposals.rles[index]),
                bbox_xyxy=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                area=int(proposals.area[index]),
                score=float(values[index]),
                components={name: float(v[index]) for name, v in parts.items()},
            )
        )
    return candidates
