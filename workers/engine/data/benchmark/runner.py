"""The benchmark loop: sentences grouped by image, one ``Engine.predict`` call per image and pipeline.

(``schedule="per-ref"`` instead redoes the image-level work for every ref, as the peers' code does, to
measure what our schedule saves; see docs/PERFORMANCE.md.)

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
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pycocotools import mask as mask_utils

from workers.engine.core.meter import Meter
from workers.engine.core.types import Candidate, ImageInput
from workers.engine.data.benchmark.loader import PrefetchingLoader
from workers.engine.data.benchmark.profile import RunProfile
from workers.engine.data.benchmark.results import SentenceResult
from workers.engine.data.metrics import HIT_KS, intersection_union
from workers.engine.data.refer import ImageGroup, ReferDataset, SentenceItem

__all__ = [
    "SCHEDULES",
    "EngineLike",
    "ImageDone",
    "MissingImage",
    "RunOutcome",
    "candidate_ious",
    "decode_candidate",
    "run_groups",
]

#: ``per-image``: ours. ``per-ref``: the public code's (image-level work redone for every ref; measurement only).
SCHEDULES = ("per-image", "per-ref")


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
        isolated: bool = False,
    ) -> Any:
        """A ``workers.engine.runtime.Prediction`` (``candidates``, ``config``); ``isolated``: image work
        afresh in a throwaway cache (asked only by the per-ref schedule)."""
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


@dataclass(frozen=True)
class _Metered:
    prediction: Any
    seconds: float
    model_calls: dict[str, float]
    stages: dict[str, Any]


def _predict_metered(
    engine: EngineLike,
    image: ImageInput,
    texts: list[str],
    pipeline: str,
    config: Mapping | None,
    *,
    isolated: bool = False,
) -> _Metered:
    """Call ``engine.predict``: its ``Prediction``, seconds, model calls (by model) and meter stages."""
    extra = {"isolated": True} if isolated else {}
    start = time.perf_counter()
    with engine.meter.capture() as private:
        prediction = engine.predict(image, texts, pipeline=pipeline, config=config, top_k=None, **extra)
    seconds = time.perf_counter() - start
    answers = prediction.candidates
    if len(answers) != len(texts):
        raise ValueError(f"pipeline {pipeline} answered {len(answers)} expressions for {len(texts)} asked")
    snapshot = private.snapshot()
    return _Metered(prediction, seconds, _model_calls(snapshot), dict(snapshot.get("stages") or {}))


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


@dataclass(frozen=True)
class ImageDone:
    """One image finished by :func:`run_groups` (for estimates and progress).

    Attributes:
        image_id: the COCO image id.
        sentences: (sentence, pipeline) pairs predicted on it.
        wall_seconds: wall time of the loop on this image (predict calls, re-decoding under per-ref,
            handing results on), since the previous image finished.
        model_calls: model calls made on it, by model.
    """

    image_id: int
    sentences: int
    wall_seconds: float
    model_calls: dict[str, float]


def _units(items: list[SentenceItem], schedule: str) -> list[list[SentenceItem]]:
    """The sentences asked in one ``predict`` call: all of the image's (per-image) or one ref's (per-ref)."""
    if schedule == "per-image":
        return [items]
    by_ref: dict[int, list[SentenceItem]] = {}
    for item in items:
        by_ref.setdefault(item.ref_id, []).append(item)
    return list(by_ref.values())


def _score_unit(
    pipeline: str,
    items: list[SentenceItem],
    gts: Mapping[int, np.ndarray],
    answers: Sequence[Sequence[Candidate]] | None,
    seconds: float,
    calls: Mapping[str, float],
    profile: RunProfile | None,
) -> list[SentenceResult]:
    """Score one predict call's sentences (RLE decode, IoU): runs in the post-processing thread."""
    start = time.perf_counter()
    share = 1.0 / len(items)
    per_sentence_calls = {k: v * share for k, v in calls.items()}
    results = [
        _score(
            pipeline,
            item,
            gts[item.ann_id],
            list(answer) if answer is not None else None,
            seconds=seconds * share,
            image_seconds=seconds,
            model_calls=per_sentence_calls if answer is not None else {},
        )
        for item, answer in zip(items, answers if answers is not None else [None] * len(items), strict=True)
    ]
    if profile is not None:
        profile.add("metrics", time.perf_counter() - start)
    return results


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
    schedule: str = "per-image",
    prefetch: int = 2,
    profile: RunProfile | None = None,
    on_image: Callable[[ImageDone], None] | None = None,
) -> RunOutcome:
    """Evaluate the sentences of ``groups`` under each pipeline, image by image.

    Images are decoded ``prefetch`` ahead in a background thread (:class:`PrefetchingLoader`), and each
    predict call's results are scored (RLE decode, IoU against the ground truth) in a post-processing thread
    while the next call runs; results are still handed to ``on_results`` in image order.

    Args:
        configs: per-pipeline config overrides handed to ``predict``.
        done: per pipeline, sentence ids already scored (``--resume``); they are not asked again.
        on_results: called with the results of one predict call (store them; a JSONL append, a DB insert);
            a run stopped between calls loses no finished call.
        on_progress: called with the number of (sentence, pipeline) pairs just finished.
        schedule: ``"per-image"`` (ours: one predict call per image and pipeline, image-level work shared by
            all its sentences) or ``"per-ref"`` (the peers' schedule, for cost measurements only: the image is
            decoded again and its image-level work redone, in a throwaway cache, for every ref).
        prefetch: images decoded ahead (``0``: decode in this thread).
        profile: where to add the seconds of each phase (``--profile``).
        on_image: called after each image with its :class:`ImageDone`.

    Raises:
        MissingImageError: an image is not in the image folder and ``skip_missing`` is off.
        ValueError: an unknown ``schedule``; a pipeline answered the wrong number of expressions.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    configs = configs or {}
    done = done or {}
    outcome = RunOutcome()
    work: list[tuple[ImageGroup, dict[str, list[SentenceItem]]]] = []
    for group in groups:
        pending = {p: [s for s in group.sentences if s.sent_id not in done.get(p, set())] for p in pipelines}
        if any(pending.values()):
            work.append((group, pending))
    loader = PrefetchingLoader(
        dataset,
        [(g, [s.ann_id for items in pending.values() for s in items]) for g, pending in work],
        depth=prefetch,
    )
    post = ThreadPoolExecutor(max_workers=1, thread_name_prefix="benchmark-metrics")
    waiting: deque[Future[list[SentenceResult]]] = deque()

    broken = False  # on_results itself raised: never call it again

    def hand_on(block: bool) -> None:
        nonlocal broken
        while waiting and (block or waiting[0].done()):
            start = time.perf_counter()
            results = waiting[0].result()
            if profile is not None:
                profile.add("waiting for metrics", time.perf_counter() - start)
            waiting.popleft()
            start = time.perf_counter()
            try:
                on_results(results)
            except BaseException:
                broken = True
                raise
            if profile is not None:
                profile.add("writing", time.perf_counter() - start)
            outcome.sentences_done += len(results)
            if on_progress:
                on_progress(len(results))

    try:
        with loader:
            last = time.perf_counter()
            for (group, pending), loaded in zip(work, loader, strict=True):
                if profile is not None:
                    profile.add("decode", loaded.decode_seconds)
                image_calls: dict[str, float] = {}
                n_asked = sum(len(items) for items in pending.values())
                if loaded.missing is not None:
                    if not skip_missing:
                        raise loaded.missing
                    missing_ids = sorted({s.sent_id for items in pending.values() for s in items})
                    outcome.missing_images.append(
                        MissingImage(group.image_id, str(loaded.missing.path), tuple(missing_ids))
                    )
                    for pipeline, items in pending.items():
                        if items:
                            waiting.append(
                                post.submit(_score_unit, pipeline, items, loaded.gts, None, 0.0, {}, profile)
                            )
                else:
                    image = ImageInput(rgb=loaded.rgb, sha256=hashlib.sha256(loaded.data).hexdigest())
                    for pipeline, items in pending.items():
                        for unit in _units(items, schedule):
                            if schedule == "per-ref":  # the peers' loaders read the image again for every ref
                                start = time.perf_counter()
                                rgb, data = dataset.load_image(group)
                                image = ImageInput(rgb=rgb, sha256=hashlib.sha256(data).hexdigest())
                                if profile is not None:
                                    profile.add("decode per ref", time.perf_counter() - start)
                            metered = _predict_metered(
                                engine,
                                image,
                                [s.text for s in unit],
                                pipeline,
                                configs.get(pipeline),
                                isolated=schedule == "per-ref",
                            )
                            if profile is not None:
                                profile.add_predict(metered.seconds, metered.stages)
                            outcome.configs.setdefault(pipeline, dict(metered.prediction.config))
                            for model, n in metered.model_calls.items():
                                image_calls[model] = image_calls.get(model, 0.0) + n
                            waiting.append(
                                post.submit(
                                    _score_unit,
                                    pipeline,
                                    unit,
                                    loaded.gts,
                                    metered.prediction.candidates,
                                    metered.seconds,
                                    metered.model_calls,
                                    profile,
                                )
                            )
                            hand_on(block=False)
                outcome.images_done += 1
                hand_on(block=False)
                now = time.perf_counter()
                if on_image is not None:
                    on_image(ImageDone(group.image_id, n_asked, now - last, image_calls))
                last = now
            if profile is not None:
                profile.add("waiting for images", loader.waited_seconds)
        hand_on(block=True)
    finally:
        # Stopped early (Ctrl-C, a cancelled shard, an error): still hand on, in order, every call already
        # predicted (its scoring is short CPU work), unless handing on is what failed.
        while waiting and not broken:
            try:
                results = waiting.popleft().result()
            except Exception:
                break
            on_results(results)
            outcome.sentences_done += len(results)
        post.shutdown(wait=True, cancel_futures=True)
    return outcome
