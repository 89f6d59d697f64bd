"""Per-sentence benchmark results: the record, and the JSON-lines file they are appended to.

A results file holds one JSON object per line, one line per (pipeline, sentence). Lines are written whole:
all lines of one image and pipeline go out in one ``os.write`` on an ``O_APPEND`` descriptor while Ctrl-C is
held back, so an interrupted run never leaves half a line. A file cut short some other way (a killed
process, a full disk) is repaired on reading: a last line without its newline is dropped and truncated away,
and ``--resume`` redoes that image.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ResultsFile", "ResultsFileError", "SentenceResult", "hold_sigint"]


class ResultsFileError(ValueError):
    """A results file whose content is not results (a line in its middle is not a JSON record)."""


@dataclass(frozen=True)
class SentenceResult:
    """The outcome of one sentence under one pipeline.

    ``seconds`` and ``model_calls`` are this sentence's share of its image's ``Engine.predict`` call (the
    call's totals divided by the sentences it answered), so sums over sentences give the run's totals.

    ``ranked_ious``: the IoUs of the top ``max(HIT_KS)`` candidates in rank order (Hit@k, oracle IoU@k);
    ``ceiling_iou``: the best IoU over every candidate returned (``None``: no candidate). Records written
    before these existed read back with ``[]`` / ``None``.
    """

    pipeline: str
    sent_id: int
    ref_id: int
    ann_id: int
    image_id: int
    text: str
    intersection: int
    union: int
    iou: float
    pred_area: int
    gt_area: int
    n_candidates: int
    top_score: float | None
    no_proposal: bool
    missing_image: bool
    seconds: float
    image_seconds: float
    model_calls: dict[str, float] = field(default_factory=dict)
    ranked_ious: list[float] = field(default_factory=list)
    ceiling_iou: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SentenceResult:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})


@contextmanager
def hold_sigint() -> Iterator[None]:
    """Defer Ctrl-C (SIGINT) until the block ends; a no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


class ResultsFile:
    """Append-only JSON-lines file of :class:`SentenceResult` records."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    def read(self, *, repair: bool = True) -> list[SentenceResult]:
        """All complete records; a trailing partial line is dropped (and cut from the file when ``repair``).

        Raises:
            ResultsFileError: a complete line is not a JSON results record (the message names the line).
        """
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        complete_end = data.rfind(b"\n") + 1
        if complete_end < len(data) and repair:
            with self.path.open("r+b") as fh:
                fh.truncate(complete_end)
        records = []
        for number, line in enumerate(data[:complete_end].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(SentenceResult.from_json(json.loads(line)))
            except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as exc:
                raise ResultsFileError(f"{self.path} line {number} is not a results record: {exc}") from exc
        return records

    def append(self, records: Iterable[SentenceResult]) -> None:
        """Append records as whole lines in one write, with Ctrl-C held back until it is done."""
        payload = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        if not payload:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with hold_sigint():
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(payload)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            finally:
                os.close(fd)

    def rewrite(self, records: Iterable[SentenceResult]) -> None:
        """Replace the file's content atomically (write a sibling, then rename)."""
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
        os.replace(tmp, self.path)
