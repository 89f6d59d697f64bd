"""``manage.py benchmark``: RefCOCO, RefCOCO+ and RefCOCOg through the engine, every sentence scored.

    python manage.py benchmark --dataset refcoco --split val --pipeline global_local --data-root DATA \\
        [--pipeline tas ...] [--split-by unc|umd|google] [--limit N] [--device cpu|cuda] [--out DIR] \\
        [--resume] [--distributed] [--skip-missing] [--gt-union] [--config PIPELINE.KEY=VALUE ...]

Single process: images in id order, one ``Engine.predict`` per image and pipeline, each image's results
appended to ``OUT/results.jsonl`` as it finishes; Ctrl-C stops between whole lines and ``--resume``
continues. ``--distributed``: the images are cut into shards, each shard is one
``workers.benchmark_tasks.run_benchmark_shard`` task on the ``background`` lane's queue, the workers write sentence rows
to the database, and this command waits, then merges them into the same ``results.jsonl``. Both modes end
with ``summary.md``, ``summary.json`` and ``figure.png`` in ``OUT`` and the run stored in the database
(shown at ``/benchmarks/``). Docs: docs/BENCHMARK.md.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from server.benchmarks.services import SHARD_TASK


def build_engine(device: str | None) -> Any:
    """The engine of a single-process run (Django's ``RIS_ENGINE`` settings; ``device`` overrides its device)."""
    from workers.engine.runtime import Engine

    engine_settings = settings.RIS_ENGINE
    if device:
        engine_settings = engine_settings.replace(device=device)
    return Engine(engine_settings)


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
            "--queue",
            default=None,
            help="Celery queue of the shard tasks (default: routing, the background lane)",
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
        from workers.engine.core.errors import EngineError
        from workers.engine.data.benchmark.report import parse_config_overrides
        from workers.engine.data.benchmark.session import BenchmarkSession, IncompleteRunError
        from workers.engine.data.benchmark.spec import BenchmarkSpec, RunFolderError
        from workers.engine.data.refer import DatasetError, default_split_by
        from workers.engine.methods.catalogue import pipeline_names, resolve_config

        pipelines = list(dict.fromkeys(opts["pipelines"]))
        if opts["limit"] is not None and opts["limit"] < 1:
            raise CommandError(f"--limit must be at least 1, got {opts['limit']}")
        if opts["shard_images"] < 1:
            raise CommandError(f"--shard-images must be at least 1, got {opts['shard_images']}")
        unknown = [p for p in pipelines if p not in pipeline_names()]
        if unknown:
            raise CommandError(
                f"unknown pipeline(s) {', '.join(unknown)}; the catalogue offers: {', '.join(pipeline_names())}"
            )
        try:
            overrides = parse_config_overrides(opts["config_items"], pipelines)
            for pipeline in pipelines:  # refuse a bad key before any model loads or any shard is sent
                resolve_config(pipeline, overrides.get(pipeline) or None, settings.RIS_ENGINE.profile)
        except (ValueError, EngineError) as exc:
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
        out = opts["out"] or Path(settings.VAR_DIR) / "benchmarks" / (
            f"{spec.dataset}-{spec.split_by}-{spec.split}-{datetime.now():%Y%m%d-%H%M%S}"
        )
        try:
            session = BenchmarkSession(spec, out)
            meta = session.start(resume=opts["resume"], distributed=opts["distributed"])
        except (DatasetError, RunFolderError, ValueError) as exc:
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
            session.folder.write_meta(meta)
        self.stdout.write(
            f"Benchmark run #{run.pk}: {spec.dataset} ({spec.split_by}) {spec.split}, {session.n_images} images, "
            f"{session.n_sentences} sentences, pipelines {', '.join(pipelines)} -> {out}"
        )
        try:
            if opts["distributed"]:
                configs = self._run_distributed(run, session, opts)
                records = self._merge_from_db(run, session)
            else:
                engine = build_engine(opts["device"])
                configs = self._run_local(session, engine, opts)
                records = session.folder.results.read()
                services.sentence_results_store(run=run, records=[r.to_json() for r in records])
            report = session.finish(records, configs, {"db_run_id": run.pk, "distributed": run.distributed})
            services.run_finish(
                run=run,
                summary=report.summary,
                configs=configs,
                n_images=session.n_images,
                n_sentences=session.n_sentences,
                missing_images=report.missing_images,
                summary_markdown=report.markdown,
                figure_png=report.paths["figure"].read_bytes(),
            )
        except KeyboardInterrupt:
            services.run_set_state(
                run=run,
                state=BenchmarkRun.State.INTERRUPTED,
                error="interrupted (Ctrl-C); resume with --resume",
            )
            resume = " ".join(a for a in sys.argv[1:] if a != "--resume")
            self.stderr.write(
                f"\nInterrupted. Results so far are in {session.folder.results.path}"
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
            if isinstance(exc, DatasetError | ValueError | EngineError | IncompleteRunError):
                raise CommandError(str(exc)) from exc
            raise
        self.stdout.write(report.markdown)
        self.stdout.write(
            f"Wrote {report.paths['markdown']}, {report.paths['json']}, {report.paths['figure']} and "
            f"{session.folder.results.path}; stored as run #{run.pk} (page /benchmarks/{run.pk}/)."
        )

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

    def _run_local(self, session: Any, engine: Any, opts: dict) -> dict[str, dict]:
        """Run in this process; the configs each pipeline ran."""
        from workers.engine.data.refer import MissingImageError

        initial = sum(len(v) for v in session.done().values())
        if initial:
            self.stdout.write(
                f"Resuming: {initial} of {session.total} sentence results already in {session.folder.results.path}"
            )
        with self._progress(session.total, initial, opts, "benchmark") as bar:
            try:
                outcome = session.run_local(engine, on_progress=bar.update)
            except MissingImageError as exc:
                raise CommandError(str(exc)) from exc
        return outcome.configs

    def _run_distributed(self, run: Any, session: Any, opts: dict) -> dict[str, dict]:
        """Send the shards, wait for the workers; the configs the workers ran (one per pipeline)."""
        from server.benchmarks import selectors, services

        if opts["device"]:
            self.stderr.write(
                "Note: with --distributed each worker uses its own RIS_DEVICE; --device is ignored."
            )
        groups = session.groups
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
            session.total, selectors.sentence_results_count(run=run), opts, "benchmark (distributed)"
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
        configs = selectors.shard_configs(run=run)
        for pipeline in session.spec.pipelines:
            if pipeline not in configs:  # every shard found its sentences done: nothing ran this time
                from workers.engine.methods.catalogue import resolve_config

                configs[pipeline] = resolve_config(
                    pipeline, session.spec.configs.get(pipeline) or None, settings.RIS_ENGINE.profile
                ).to_dict()
        return configs

    def _merge_from_db(self, run: Any, session: Any) -> list:
        from server.benchmarks import selectors
        from workers.engine.data.benchmark.results import SentenceResult

        records = [SentenceResult.from_json(r) for r in selectors.sentence_results_records(run=run)]
        session.merge(records)
        return records
