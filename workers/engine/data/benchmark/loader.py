"""A prefetching image loader for the benchmark: the next images are decoded while the current one runs.

Decoding a COCO JPEG and rasterising the ground truth of its refs take tens of milliseconds of CPU per image;
on a GPU that is time the device would sit idle between images. :class:`PrefetchingLoader` does that work in
one background thread, ``depth`` images ahead of the loop, and hands the images out in order. Decoding is
done by the dataset's own reader (``ReferDataset.load_image`` / ``gt_mask``), so the numbers cannot change.

A missing image is not an error here: it is handed out with its ``MissingImageError`` and the loop decides
(``--skip-missing``). Any other exception in the thread is raised in the caller when it reaches that image.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from workers.engine.data.refer import ImageGroup, MissingImageError, ReferDataset

__all__ = ["LoadedImage", "PrefetchingLoader"]


@dataclass
class LoadedImage:
    """One image of the run, decoded.

    Attributes:
        group: the image and its sentences.
        rgb: ``H x W x 3`` uint8, or ``None`` when the file is missing (then ``missing`` is set).
        data: the file's bytes (its sha256 keys the engine's cache), ``b""`` when missing.
        gts: ground-truth masks by annotation id, ``H x W`` bool, for the annotations asked for.
        missing: the ``MissingImageError`` of a missing file.
        decode_seconds: seconds spent decoding the image and rasterising its ground truth.
    """

    group: ImageGroup
    rgb: np.ndarray | None
    data: bytes
    gts: dict[int, np.ndarray] = field(default_factory=dict)
    missing: MissingImageError | None = None
    decode_seconds: float = 0.0


def load_one(dataset: ReferDataset, group: ImageGroup, ann_ids: Sequence[int]) -> LoadedImage:
    """Decode ``group``'s image and rasterise the ground truth of ``ann_ids`` (in the calling thread)."""
    start = time.perf_counter()
    gts = {ann_id: dataset.gt_mask(ann_id) for ann_id in dict.fromkeys(ann_ids)}
    try:
        rgb, data = dataset.load_image(group)
    except MissingImageError as exc:
        return LoadedImage(group, None, b"", gts, exc, time.perf_counter() - start)
    return LoadedImage(group, rgb, data, gts, None, time.perf_counter() - start)


_END = object()


class PrefetchingLoader:
    """Yields :class:`LoadedImage` for ``work`` (groups with the annotation ids to rasterise), in order.

    Args:
        dataset: the open dataset.
        work: ``(group, ann_ids)`` pairs, in the order the loop wants them.
        depth: images decoded ahead of the consumer (``0``: decode in the caller's thread, no thread).

    ``waited_seconds`` is the time the consumer spent blocked on the loader (``0`` when decoding keeps up).
    Use as a context manager, or call :meth:`close`, so the thread stops when the loop stops early.
    """

    def __init__(
        self, dataset: ReferDataset, work: Sequence[tuple[ImageGroup, Sequence[int]]], *, depth: int = 2
    ) -> None:
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self.dataset = dataset
        self.work = list(work)
        self.depth = depth
        self.waited_seconds = 0.0
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._thread: threading.Thread | None = None

    def _put(self, item: object) -> bool:
        """Queue ``item`` unless the consumer stopped; whether it was queued."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        for group, ann_ids in self.work:
            item: object
            try:
                item = load_one(self.dataset, group, ann_ids)
            except BaseException as exc:  # handed to the consumer, raised there
                item = exc
            if not self._put(item) or isinstance(item, BaseException):
                return
        self._put(_END)

    def __iter__(self) -> Iterator[LoadedImage]:
        if self.depth == 0:
            for group, ann_ids in self.work:
                yield load_one(self.dataset, group, ann_ids)
            return
        self._thread = threading.Thread(target=self._produce, name="benchmark-prefetch", daemon=True)
        self._thread.start()
        while True:
            start = time.perf_counter()
            item = self._queue.get()
            self.waited_seconds += time.perf_counter() - start
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop the background thread (images not yet handed out are dropped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> PrefetchingLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
