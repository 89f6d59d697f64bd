"""One benchmark run's bookkeeping, apart from where its rows are stored: :class:`BenchmarkSession`.

A session opens the dataset of a :class:`~workers.engine.data.benchmark.spec.BenchmarkSpec`, checks or resumes
its output folder, runs the images through an engine in this process (``run_local``), takes results computed
elsewhere (``merge``: the shards of a distributed run), and writes the report (``finish``): the records of
the run's sentences in a fixed order, the missing images, the summary, ``summary.md`` / ``summary.json`` /
``figure.png``. ``manage.py benchmark`` adds what needs Django: the database rows, the Celery shards and the
progress bar.

The configs recorded in the report are the ones the engine actually ran (``Prediction.config``, returned by
``run_groups`` in this process or stored by each shard), never the command's own guess.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.engine.data.benchmark.profile import RunProfile
from workers.engine.data.benchmark.report import summarize_results, write_report
from workers.engine.data.benchmark.results import SentenceResult
from workers.engine.data.benchmark.runner import EngineLike, ImageDone, RunOutcome, run_groups
from workers.engine.data.benchmark.spec import BenchmarkSpec, RunFolder
from workers.engine.data.refer import ImageGroup, ReferDataset

__all__ = ["BenchmarkReport", "BenchmarkSession", "IncompleteRunError"]


class IncompleteRunError(ValueError):
    """The run's folder (or database) holds fewer sentence results than the split has."""


@dataclass
class BenchmarkReport:
    """What :meth:`BenchmarkSession.finish` wrote and computed."""

    summary: dict[str, dict[str, Any]]
    missing_images: list[dict[str, Any]]
    paths: dict[str, Path]
    records: list[SentenceResult] = field(default_factory=list)

    @property
    def markdown(self) -> str:
        return self.paths["markdown"].read_text(encoding="utf-8")


class BenchmarkSession:
    """The run of ``spec`` into the folder ``out``; see the module docstring.

    Raises:
        DatasetError: the dataset cannot be read.
        ValueError: the split holds no sentence.
    """

    def __init__(self, spec: BenchmarkSpec, out: Path | str) -> None:
        self.spec = spec
        self.out = Path(out)
        self.folder = RunFolder(self.out)
        self.dataset: ReferDataset = spec.open_dataset()
        self.groups: list[ImageGroup] = self.dataset.images(limit=spec.limit)
        self.sent_ids = {s.sent_id for g in self.groups for s in g.sentences}
        if not self.sent_ids:
            raise ValueError(
                f"{spec.dataset} ({spec.split_by}) {spec.split} has no sentences in {self.dataset.refs_path}"
            )

    @property
    def n_images(self) -> int:
        return len(self.groups)

    @property
    def n_sentences(self) -> int:
        return len(self.sent_ids)

    @property
    def total(self) -> int:
        """(sentence, pipeline) pairs the run scores."""
        return self.n_sentences * len(self.spec.pipelines)

    def start(self, *, resume: bool, distributed: bool) -> dict[str, Any]:
        """Check the folder (``RunFolder.start``) and return its meta (``RunFolderError`` when it cannot)."""
        return self.folder.start(self.spec, resume=resume, distributed=distributed)

    def pending_images(self) -> tuple[int, int]:
        """Images with a sentence still to score, and the (sentence, pipeline) pairs left."""
        done = self.done()
        images = pairs = 0
        for group in self.groups:
            left = sum(
                1 for p in self.spec.pipelines for s in group.sentences if s.sent_id not in done.get(p, set())
            )
            images += left > 0
            pairs += left
        return images, pairs

    def done(self) -> dict[str, set[int]]:
        """Per pipeline, the sentence ids of this run already in ``results.jsonl``."""
        done: dict[str, set[int]] = {}
        for record in self.folder.results.read():
            if record.sent_id in self.sent_ids:
                done.setdefault(record.pipeline, set()).add(record.sent_id)
        return done

    def run_local(
        self,
        engine: EngineLike,
        *,
        on_progress: Callable[[int], None] | None = None,
        on_image: Callable[[ImageDone], None] | None = None,
        profile: RunProfile | None = None,
        prefetch: int = 2,
    ) -> RunOutcome:
        """Score the pending sentences with ``engine`` in this process, appending to ``results.jsonl``.

        The spec's schedule is used; ``on_image``, ``profile`` and ``prefetch`` are :func:`run_groups`'s.
        The outcome's ``configs`` holds the config each pipeline ran; pipelines with nothing left to run
        (a resumed run) get the engine's resolution of the spec's overrides.
        """
        outcome = run_groups(
            self.dataset,
            self.groups,
            engine,
            self.spec.pipelines,
            configs=self.spec.configs,
            done=self.done(),
            skip_missing=self.spec.skip_missing,
            on_results=self.folder.results.append,
            on_progress=on_progress,
            on_image=on_image,
            profile=profile,
            prefetch=prefetch,
            schedule=self.spec.schedule,
        )
        for pipeline in self.spec.pipelines:
            if pipeline not in outcome.configs:
                outcome.configs[pipeline] = engine.resolve_config(pipeline, self.spec.configs.get(pipeline))
        return outcome

    def merge(self, records: Sequence[SentenceResult]) -> None:
        """Make ``results.jsonl`` hold exactly ``records`` (results computed elsewhere)."""
        self.folder.results.rewrite(records)

    def finish(
        self,
        records: Sequence[SentenceResult],
        configs: Mapping[str, Mapping[str, Any]],
        run_info: Mapping[str, Any],
    ) -> BenchmarkReport:
        """Write the report of the run's ``records`` and return it.

        Args:
            records: sentence results (extra sentences or pipelines are ignored).
            configs: per pipeline, the full config that ran.
            run_info: what else the report records (the database run id, the mode).

        Raises:
            IncompleteRunError: a sentence of the run has no result for some pipeline.
        """
        kept = [r for r in records if r.sent_id in self.sent_ids and r.pipeline in self.spec.pipelines]
        expected = self.total
        if len(kept) != expected:
            raise IncompleteRunError(
                f"the run holds {len(kept)} sentence results, {expected} expected; run again with --resume"
            )
        order = {p: i for i, p in enumerate(self.spec.pipelines)}
        kept.sort(key=lambda r: (order[r.pipeline], r.image_id, r.ref_id, r.sent_id))
        missing = self._missing_images(kept)
        summary = summarize_results(kept, self.spec.pipelines)
        info = {
            **self.spec.to_json(),
            **dict(run_info),
            "resolved_configs": {k: dict(v) for k, v in configs.items()},
        }
        paths = write_report(self.out, info, summary, missing)
        return BenchmarkReport(summary=summary, missing_images=missing, paths=paths, records=kept)

    def _missing_images(self, records: Sequence[SentenceResult]) -> list[dict[str, Any]]:
        by_id = {g.image_id: g for g in self.groups}
        missing: dict[int, dict[str, Any]] = {}
        for r in records:
            if not r.missing_image:
                continue
            entry = missing.setdefault(
                r.image_id,
                {
                    "image_id": r.image_id,
                    "path": str(self.dataset.image_path(by_id[r.image_id])),
                    "sent_ids": [],
                },
            )
            if r.sent_id not in entry["sent_ids"]:
                entry["sent_ids"].append(r.sent_id)
        return [missing[k] for k in sorted(missing)]
