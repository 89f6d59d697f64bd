"""``manage.py benchmark``: RefCOCO, RefCOCO+ and RefCOCOg through the engine, every sentence scored.

    python manage.py benchmark --dataset refcoco --split val --pipeline global_local --data-root DATA \\
        [--pipeline tas ...] [--split-by unc|umd|google] [--limit N] [--device cpu|cuda] [--out DIR] \\
        [--resume] [--distributed] [--skip-missing] [--gt-union] [--config PIPELINE.KEY=VALUE ...]

Single process: images in id order, one ``Engine.predict`` per image and pipeline, each image's results
appended to ``OUT/results.jsonl`` as it finishes; Ctrl-C stops between whole lines and ``--resume``
continues. ``--distributed``: the images are cut into shards, each shard is one
``workers.benchmark_tasks.run_benchmark_shard`` task on the ``gpu`` queue, the workers write sentence rows
to the database, and this command waits, then merges them into the same ``results.jsonl``. Both modes end
with ``summary.md``, ``summary.json`` and ``figure.png`` in ``OUT`` and the run stored in the database
(shown at ``/benchmarks/``). Docs: docs/BENCHMARK.md.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from server.benchmarks.services import SHARD_TASK


def build_engine(device: str | None) -> Any:
    """The engine of a single-process run (``RIS_*`` settings; ``device`` overrides ``RIS_DEVICE``)."""
    from workers.engine.runtime import Engine, EngineSettings

    engine_settings = EngineSettings.from_env()
    if device:
        engine_settings = dataclasses.replace(engine_settings, device=device)
    return Engine(engine_settings)


def _resolve_configs(engine: Any, pipelines: Sequence[str], overrides: dict[str, dict]) -> dict[str, dict]:
    """Full configs per pipeline (defaults + overrides) where the engine can say them; checks names early."""
    known = engine.pipelines() if hasattr(engine, "pipelines") else None
    unknown = [p for p in pipelines if known is not None and p not in known]
    if unknown:
        raise CommandError(f"unknown pipeline(s) {', '.join(unknown)}; the engine offers: {', '.join(known)}")
    if not hasattr(engine, "resolve_config"):
        return {p: dict(overrides.get(p, {})) for p in pipelines}
    return {p: engine.resolve_config(p, overrides.get(p) or None) for p in pipelines}


def _resolve_configs_offline(pipelines: Sequence[str], overrides: dict[str, dict]) -> dict[str, dict]:
    """Full configs from the pipeline registry and ``RIS_MODEL_PROFILE`` without loading any model (the
    workers of a distributed run load them); checks pipeline names and config keys before anything is sent."""
    import os

    from workers.engine.pipelines import resolve_config

    profile = os.environ.get("RIS_MODEL_PROFILE", "tiny") or "tiny"
    return {p: resolve_config(p, overrides.get(p) or None, profile).to_dict() for p in pipelines}


class Command(BaseCommand):
    help = "Benchmark pipelines on RefCOCO / RefCOCO+ / RefCOCOg (REFER files as published). See docs/BENCHMARK.md."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dataset", required=True, choices=["refcoco", "refcoco+", "refcocog"])
        parser.add_argument(
            "--split", required=True, help="val, testA, testB (RefCOCO/+), val, test (RefCOCOg umd)"
        )
        parser.add_argument(
            "--pipeline",
            action="append",
            required=True,
            dest="pipelines",
            help="pipeline name; repeat for several",
        )
        parser.add_argument(
            "--data-root", required=True, type=Path, help="folder holding refcoco*/ and images/"
        )
        parser.add_argument(
            "--image-dir",
            type=Path,
            default=None,
            help="COCO train2014 folder (default DATA_ROOT/images/train2014)",
        )
        parser.add_argument(
            "--split-by", choices=["unc", "umd", "google"], default=None, help="default unc; umd for refcocog"
        )
        parser.add_argument(
            "--limit", type=int, default=None, help="only the first N sentences (image-id order)"
        )
        parser.add_argument(
            "--device", choices=["cpu", "cuda"], default=None, help="overrides RIS_DEVICE (single process)"
        )
        parser.add_argument(
            "--out", type=Path, default=None, help="output folder (default var/benchmarks/DATASET-SPLIT-TIME)"
        )
        parser.add_argument("--resume", action="store_true", help="continue the run in --out")
        parser.add_argument("--distributed", action="store_true", help="shard by image across Celery workers")
        parser.add_argument(
            "--skip-missing", action="store_true", help="score sentences of missing images IoU 0 and go on"
        )
        parser.add_argument("--gt-union", action="store_true", help="ground truth = union of polygon parts")
        parser.add_argument(
            "--text-field", choices=["sent", "raw"], default="sent", help="sentence field used (default sent)"
        )
        parser.add_argument(
            "--config",
            action="append",
            default=[],
            dest="config_items",
            metavar="PIPELINE.KEY=VALUE",
            help="config override (dotted keys for nested values; JSON values)",
        )
        parser.add_argument(
            "--shard-images", type=int, default=25, help="images per shard with --distributed (default 25)"
        )
        parser.add_argument(
            "--queue", default=None, help="Celery queue of the shard tasks (default: routing, gpu)"
        )
        parser.add_argument(
            "--poll", type=float, default=1.0, help="seconds between progress checks (--distributed)"
        )
        parser.add_argument(
            "--wait-timeout", type=float, default=None, help="give up waiting for workers after S seconds"
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    # -------------------------------------------------------------------------------------------------
    def handle(self, *args: Any, **opts: Any) -> None:
        from server.benchmarks import services
        from server.benchmarks.models import BenchmarkRun
        from workers.engine.benchmark import BenchmarkSpec, RunFolder, RunFolderError, parse_config_overrides
        from workers.engine.errors import EngineError
        from workers.engine.refer import DatasetError, default_split_by

        pipelines = list(dict.fromkeys(opts["pipelines"]))
        if opts["limit"] is not None and opts["limit"] < 1:
            raise CommandError(f"--limit must be at least 1, got {opts['limit']}")
        if opts["shard_images"] < 1:
            raise CommandError(f"--shard-images must be at least 1, got {opts['shard_images']}")
        try:
            overrides = parse_config_overrides(opts["config_items"], pipelines)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        spec = BenchmarkSpec(
            dataset=opts["dataset"],
            split=opts["split"],
            split_by=opts["split_by"] or default_split_by(opts["dataset"]),
            pipelines=tuple(pipelines),
            data_root=str(opts["data_root"].resolve()),
            image_dir=str(opts["image_dir"].resolve()) if opts["image_dir"] else None,
            configs=overrides,
            limit=opts["limit"],
            gt_union=opts["gt_union"],
            skip_missing=opts["skip_missing"],
            text_field=opts["text_field"],
        )
        try:
            dataset = spec.open_dataset()
        except DatasetError as exc:
            raise CommandError(str(exc)) from exc
        groups = dataset.images(limit=spec.limit)
        n_sentences = sum(len(g.sentences) for g in groups)
        if n_sentences == 0:
            raise CommandError(
                f"{spec.dataset} ({spec.split_by}) {spec.split} has no sentences in {dataset.refs_path}"
            )

        out = opts["out"] or Path(settings.VAR_DIR) / "benchmarks" / (
            f"{spec.dataset}-{spec.split_by}-{spec.split}-{datetime.now():%Y%m%d-%H%M%S}"
        )
        folder = RunFolder(out)
        try:
            meta = folder.start(spec, resume=opts["resume"], distributed=opts["distributed"])
        except RunFolderError as exc:
            raise CommandError(str(exc)) from exc

        run = BenchmarkRun.objects.filter(pk=meta.get("db_run_id")).first() if meta.get("db_run_id") else None
        if run is not None:
            services.run_restart(run=run, spec=spec.to_json())
        else:
            run = services.run_create(
                spec=spec.to_json(),
                distributed=opts["distributed"],
                device=opts["device"] or "",
                out_dir=str(out),
            )
            meta["db_run_id"] = run.pk
            folder.write_meta(meta)
        self.stdout.write(
            f"Benchmark run #{run.pk}: {spec.dataset} ({spec.split_by}) {spec.split}, {len(groups)} images, "
            f"{n_sentences} sentences, pipelines {', '.join(pipelines)} -> {out}"
        )
        try:
            if opts["distributed"]:
                resolved = _resolve_configs_offline(pipelines, overrides)
                self._run_distributed(run, groups, n_sentences * len(pipelines), opts)
                records = self._merge_from_db(run, folder)
            else:
                engine = build_engine(opts["device"])
                resolved = _resolve_configs(engine, pipelines, overrides)
                self._run_local(dataset, groups, engine, spec, folder, n_sentences * len(pipelines), opts)
                records = folder.results.read()
                services.sentence_results_store(run=run, records=[r.to_json() for r in records])
            self._finish(run, spec, dataset, groups, records, resolved, folder, out)
        except KeyboardInterrupt:
            services.run_set_state(
                run=run,
                state=BenchmarkRun.State.INTERRUPTED,
                error="interrupted (Ctrl-C); resume with --resume",
            )
            resume = " ".join(a for a in sys.argv[1:] if a != "--resume")
            self.stderr.write(
                f"\nInterrupted. Results so far are in {folder.results.path}"
                + (" and the shards already sent keep running on the workers" if opts["distributed"] else "")
                + f". Continue with: python manage.py {resume} --resume"
            )
            raise SystemExit(130) from None
        except CommandError as exc:
            services.run_set_state(run=run, state=BenchmarkRun.State.FAILED, error=str(exc))
            raise
        except Exception as exc:
            services.run_set_state(
                run=run, state=BenchmarkRun.State.FAILED, error=f"{type(exc).__name__}: {exc}"
            )
            if isinstance(exc, DatasetError | ValueError | EngineError):
                raise CommandError(str(exc)) from exc
            raise

    # -------------------------------------------------------------------------------------------------
    def _progress(self, total: int, initial: int, opts: dict[str, Any], desc: str) -> Any:
        from tqdm import tqdm

        return tqdm(
            total=total,
            initial=initial,
            unit="sent",
            desc=desc,
            disable=opts["no_progress"],
            file=sys.stderr,
            dynamic_ncols=True,
            smoothing=0.1,
        )

    def _run_local(
        self, dataset: Any, groups: list, engine: Any, spec: Any, folder: Any, total: int, opts: dict
    ) -> None:
        from workers.engine.benchmark import run_groups

        wanted = {s.sent_id for g in groups for s in g.sentences}
        done: dict[str, set[int]] = {}
        for record in folder.results.read():
            if record.sent_id in wanted:
                done.setdefault(record.pipeline, set()).add(record.sent_id)
        initial = sum(len(v) for v in done.values())
        if initial:
            self.stdout.write(
                f"Resuming: {initial} of {total} sentence results already in {folder.results.path}"
            )
        with self._progress(total, initial, opts, "benchmark") as bar:
            try:
                run_groups(
                    dataset,
                    groups,
                    engine,
                    spec.pipelines,
                    configs=spec.configs,
                    done=done,
                    skip_missing=spec.skip_missing,
                    on_results=folder.results.append,
                    on_progress=bar.update,
                )
            except Exception as exc:
                from workers.engine.refer import MissingImageError

                if isinstance(exc, MissingImageError):
                    raise CommandError(str(exc)) from exc
                raise

    def _run_distributed(self, run: Any, groups: list, total: int, opts: dict) -> None:
        from server.benchmarks import selectors, services

        if opts["device"]:
            self.stderr.write(
                "Note: with --distributed each worker uses its own RIS_DEVICE; --device is ignored."
            )
        if run.shards.exists():
            shards = services.shards_requeue(run=run)
        else:
            size = opts["shard_images"]
            cuts = [groups[i : i + size] for i in range(0, len(groups), size)]
            shards = services.shards_create(
                run=run,
                shards=[([g.image_id for g in cut], sum(len(g.sentences) for g in cut)) for cut in cuts],
            )
        for shard in shards:
            if not services.shard_dispatch(shard=shard, queue=opts["queue"] or ""):
                raise CommandError(
                    f"could not send shard {shard.index} to the broker (is it running?); "
                    "run the command again with --resume once it is"
                )
        queue = opts["queue"] or settings.CELERY_TASK_ROUTES.get(SHARD_TASK, {}).get("queue", "default")
        self.stdout.write(
            f"Sent {len(shards)} shard task(s) to queue {queue!r}; waiting for workers "
            f"(start one with: celery -A workers.celery_app worker -Q {queue} -c 1)"
        )
        started = time.monotonic()
        n_shards = run.shards.count()
        with self._progress(
            total, selectors.sentence_results_count(run=run), opts, "benchmark (distributed)"
        ) as bar:
            while True:
                count = selectors.sentence_results_count(run=run)
                bar.update(count - bar.n)
                states = selectors.shard_states(run=run)
                failed = selectors.shards_failed(run=run)
                if failed:
                    raise CommandError("; ".join(s.error or f"shard {s.index} failed" for s in failed))
                if states["done"] == n_shards:
                    break
                if opts["wait_timeout"] is not None and time.monotonic() - started > opts["wait_timeout"]:
                    raise CommandError(
                        f"gave up after {opts['wait_timeout']:.0f} s: {states['done']} of {n_shards} shards done "
                        f"({states['queued']} queued, {states['running']} running); is a worker consuming {queue!r}?"
                    )
                time.sleep(opts["poll"])

    def _merge_from_db(self, run: Any, folder: Any) -> list:
        from server.benchmarks import selectors
        from workers.engine.benchmark import SentenceResult

        records = [SentenceResult.from_json(r) for r in selectors.sentence_results_records(run=run)]
        folder.results.rewrite(records)
        return records

    def _finish(
        self,
        run: Any,
        spec: Any,
        dataset: Any,
        groups: list,
        records: list,
        resolved: dict,
        folder: Any,
        out: Path,
    ) -> None:
        from server.benchmarks import services
        from workers.engine.benchmark import summarize_results, write_report

        wanted = {s.sent_id for g in groups for s in g.sentences}
        records = [r for r in records if r.sent_id in wanted and r.pipeline in spec.pipelines]
        expected = len(wanted) * len(spec.pipelines)
        if len(records) != expected:
            raise CommandError(
                f"the run holds {len(records)} sentence results, {expected} expected; run again with --resume"
            )
        order = {p: i for i, p in enumerate(spec.pipelines)}
        records.sort(key=lambda r: (order[r.pipeline], r.image_id, r.ref_id, r.sent_id))
        missing: dict[int, dict[str, Any]] = {}
        by_id = {g.image_id: g for g in groups}
        for r in records:
            if r.missing_image:
                entry = missing.setdefault(
                    r.image_id,
                    {
                        "image_id": r.image_id,
                        "path": str(dataset.image_path(by_id[r.image_id])),
                        "sent_ids": [],
                    },
                )
                if r.sent_id not in entry["sent_ids"]:
                    entry["sent_ids"].append(r.sent_id)
        missing_list = [missing[k] for k in sorted(missing)]
        summary = summarize_results(records, spec.pipelines)
        run_info = {
            **spec.to_json(),
            "db_run_id": run.pk,
            "distributed": run.distributed,
            "resolved_configs": resolved,
        }
        paths = write_report(out, run_info, summary, missing_list)
        services.run_finish(
            run=run,
            summary=summary,
            configs=resolved,
            n_images=len(groups),
            n_sentences=len(wanted),
            missing_images=missing_list,
            summary_markdown=paths["markdown"].read_text(encoding="utf-8"),
            figure_png=paths["figure"].read_bytes(),
        )
        self.stdout.write(paths["markdown"].read_text(encoding="utf-8"))
        self.stdout.write(
            f"Wrote {paths['markdown']}, {paths['json']}, {paths['figure']} and {folder.results.path}; "
            f"stored as run #{run.pk} (page /benchmarks/{run.pk}/)."
        )
