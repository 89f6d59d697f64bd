"""The benchmark loop: sentences grouped by image, one ``Engine.predict`` call per image and pipeline.

``run_groups`` is the one loop behind the single-process command and each distributed shard, so the two
give the same numbers: for every image it loads the picture once, rasterises the ground truth of its refs
once, and asks each pipeline about all of the image's pending sentences in one call, so per-image work
(proposals, SAM embedding, per-mask CLIP features) is shared by every sentence on it.

Every sentence is scored against every candidate the pipeline returns (``top_k=None``): the top one gives
I and U (oIoU, mIoU, Prec@X); the IoUs of the top ``max(HIT_KS)`` and the best over all of them give the
ranking metrics (Hit@k, oracle IoU@k, proposal ceiling; :func:`candidate_ious`). No proposal (an empty candidate list) gives an empty prediction: I = 0,
U = |gt|, IoU 0. An image missing from the image folder stops the run (``MissingImageError``), or with
``skip_missing`` scores its sentences the same way and is listed.

The engine is anything of the :class:`EngineLike` protocol: ``workers.engine.runtime.Engine``, or in tests a
small deterministic engine implementing the same calls. ``run_groups`` also returns the full config each
pipeline ran with (from ``Prediction.config``), so a run records what actually ran, on whichever worker.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pycocotools import mask as mask_utils

from workers.engine.core.meter import Meter
from workers.engine.core.types import Candidate, ImageInput
from workers.engine.data.benchmark.results import SentenceResult
from workers.engine.data.metrics import HIT_KS, intersection_union
from workers.engine.data.refer import ImageGroup, MissingImageError, ReferDataset, SentenceItem

__all__ = ["EngineLike", "MissingImage", "RunOutcome", "candidate_ious", "decode_candidate", "run_groups"]


class EngineLike(Protocol):
    """What the benchmark needs of an engine (``workers.engine.runtime.Engine`` is one)."""

    meter: Meter

    def pipelines(self) -> list[str]: ...

    def resolve_config(self, pipeline: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]: ...

    def predict(
        self,
        image: ImageInput,
        expressions: Sequence[str],
        *,
        pipeline: str,
        config: Mapping | None = None,
        top_k: int | None = None,
    ) -> Any:
        """A ``workers.engine.runtime.Prediction`` (``candidates``, ``config``)."""
        ...


@dataclass(frozen=True)
class MissingImage:
    image_id: int
    path: str
    sent_ids: tuple[int, ...]


@dataclass
class RunOutcome:
    """What one call of :func:`run_groups` did."""

    images_done: int = 0
    sentences_done: int = 0
    missing_images: list[MissingImage] = field(default_factory=list)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)


def decode_candidate(candidate: Candidate, height: int, width: int) -> np.ndarray:
    """The candidate's RLE as an ``H x W`` bool mask; raises ``ValueError`` when its size is not the image's."""
    rle = candidate.rle
    size = [int(s) for s in rle["size"]]
    if size != [height, width]:
        raise ValueError(f"a candidate mask is {size[1]}x{size[0]} but its image is {width}x{height}")
    counts = rle["counts"]
    if isinstance(counts, list):
        coco = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
    else:
        coco = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(coco).astype(bool)


def candidate_ious(candidates: Sequence[Candidate], gt: np.ndarray) -> np.ndarray:
    """IoU of each candidate's mask with the ``H x W`` ground truth, in candidate order (float64, on RLE).

    Raises:
        ValueError: a candidate mask whose size is not the ground truth's.
    """
    if not candidates:
        return np.zeros(0, dtype=np.float64)
    height, width = gt.shape
    rles = []
    for candidate in candidates:
        size = [int(s) for s in candidate.rle["size"]]
        if size != [height, width]:
            raise ValueError(f"a candidate mask is {size[1]}x{size[0]} but its image is {width}x{height}")
        counts = candidate.rle["counts"]
        rles.append({"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
    gt_rle = mask_utils.encode(np.asfortranarray(gt.astype(np.uint8)))
    if not gt.any():  # pycocotools gives 0 for an empty union; so do we
        return np.zeros(len(rles), dtype=np.float64)
    return np.asarray(mask_utils.iou(rles, [gt_rle], [0]), dtype=np.float64).reshape(-1)


def _model_calls(snapshot: Mapping[str, Any]) -> dict[str, float]:
    return {name: float(t.get("calls", 0)) for name, t in (snapshot.get("models") or {}).items()}


def _predict_metered(
    engine: EngineLike, image: ImageInput, texts: list[str], pipeline: str, config: Mapping | None
) -> tuple[Any, float, dict[str, float]]:
    """Call ``engine.predict``; its ``Prediction``, its seconds and the model calls it made (by model)."""
    start = time.perf_counter()
    with engine.meter.capture() as private:
        prediction = engine.predict(image, texts, pipeline=pipeline, config=config, top_k=None)
    seconds = time.perf_counter() - start
    answers = prediction.candidates
    if len(answers) != len(texts):
        raise ValueError(f"pipeline {pipeline} answered {len(answers)} expressions for {len(texts)} asked")
    return prediction, seconds, _model_calls(private.snapshot())


def _score(
    pipeline: str,
    item: SentenceItem,
    gt: np.ndarray,
    candidates: list[Candidate] | None,
    *,
    seconds: float,
    image_seconds: float,
    model_calls: dict[str, float],
) -> SentenceResult:
    top = candidates[0] if candidates else None
    pred = decode_candidate(top, gt.shape[0], gt.shape[1]) if top is not None else None
    counts = intersection_union(pred, gt)
    ious = candidate_ious(candidates or [], gt)
    ranked = [float(v) for v in ious[: max(HIT_KS)]]
    if ranked:
        ranked[0] = counts.iou  # the exact integer ratio, so Hit@1 == Prec@0.5 to the bit
    return SentenceResult(
        pipeline=pipeline,
        sent_id=item.sent_id,
        ref_id=item.ref_id,
        ann_id=item.ann_id,
        image_id=item.image_id,
        text=item.text,
        intersection=counts.intersection,
        union=counts.union,
        iou=counts.iou,
        pred_area=int(pred.sum()) if pred is not None else 0,
        gt_area=int(gt.sum()),
        n_candidates=len(candidates or []),
        top_score=float(top.score) if top is not None else None,
        no_proposal=candidates is not None and not candidates,
        missing_image=candidates is None,
        seconds=seconds,
        image_seconds=image_seconds,
        model_calls=model_calls,
        ranked_ious=ranked,
        ceiling_iou=max(ranked[0], float(ious.max())) if ranked else None,
    )


def run_groups(
    dataset: ReferDataset,
    groups: Sequence[ImageGroup],
    engine: EngineLike,
    pipelines: Sequence[str],
    *,
    configs: Mapping[str, Mapping] | None = None,
    done: Mapping[str, set[int]] | None = None,
    skip_missing: bool = False,
    on_results: Callable[[list[SentenceResult]], None],
    on_progress: Callable[[int], None] | None = None,
) -> RunOutcome:
    """Evaluate the sentences of ``groups`` under each pipeline, image by image.

    Args:
        configs: per-pipeline config overrides handed to ``predict``.
        done: per pipeline, sentence ids already scored (``--resume``); they are not asked again.
        on_results: called with the results of one image and pipeline (store them; a JSONL append, a DB
            insert); a run stopped between calls loses no finished image.
        on_progress: called with the number of (sentence, pipeline) pairs just finished.

    Raises:
        MissingImageError: an image is not in the image folder and ``skip_missing`` is off.
    """
    configs = configs or {}
    done = done or {}
    outcome = RunOutcome()
    for group in groups:
        pending = {p: [s for s in group.sentences if s.sent_id not in done.get(p, set())] for p in pipelines}
        if not any(pending.values()):
            continue
        gts: dict[int, np.ndarray] = {}
        for items in pending.values():
            for item in items:
                if item.ann_id not in gts:
                    gts[item.ann_id] = dataset.gt_mask(item.ann_id)
        try:
            rgb, data = dataset.load_image(group)
        except MissingImageError as exc:
            if not skip_missing:
                raise
            missing_ids = sorted({s.sent_id for items in pending.values() for s in items})
            outcome.missing_images.append(MissingImage(group.image_id, str(exc.path), tuple(missing_ids)))
            for pipeline, items in pending.items():
                results = [
                    _score(pipeline, s, gts[s.ann_id], None, seconds=0.0, image_seconds=0.0, model_calls={})
                    for s in items
                ]
                if results:
                    on_results(results)
                    outcome.sentences_done += len(results)
                    if on_progress:
                        on_progress(len(results))
            outcome.images_done += 1
            continue
        image = ImageInput(rgb=rgb, sha256=hashlib.sha256(data).hexdigest())
        for pipeline, items in pending.items():
            if not items:
                continue
            prediction, seconds, calls = _predict_metered(
                engine, image, [s.text for s in items], pipeline, configs.get(pipeline)
            )
            outcome.configs.setdefault(pipeline, dict(prediction.config))
            answers = prediction.candidates
            share = 1.0 / len(items)
            per_sentence_calls = {k: v * share for k, v in calls.items()}
            results = [
                _score(
                    pipeline,
                    item,
                    gts[item.ann_id],
                    list(answer),
                    seconds=seconds * share,
                    image_seconds=seconds,
                    model_calls=per_sentence_calls,
                )
                for item, answer in zip(items, answers, strict=True)
            ]
            on_results(results)
            outcome.sentences_done += len(results)
            if on_progress:
                on_progress(len(results))
        outcome.images_done += 1
    return outcome
