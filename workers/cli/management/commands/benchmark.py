"""``manage.py benchmark``: RefCOCO, RefCOCO+ and RefCOCOg through the engine, every sentence scored.

    python manage.py benchmark --dataset refcoco --split val --pipeline global_local --data-root DATA \\
        [--pipeline tas ...] [--split-by unc|umd|google] [--limit N] [--device cpu|cuda] [--out DIR] \\
        [--resume] [--distributed] [--skip-missing] [--gt-union] [--config PIPELINE.KEY=VALUE ...] \\
        [--schedule per-image|per-ref] [--profile] [--warmup N] [--prefetch N]
    python manage.py benchmark --check --dataset refcoco --data-root DATA [--split-by unc] [--no-images]

Single process: images in id order, one ``Engine.predict`` per image and pipeline, each image's results
appended to ``OUT/results.jsonl`` as it finishes; Ctrl-C stops between whole lines and ``--resume``
continues. ``--distributed``: the images are cut into shards, each shard is one
``workers.benchmark_tasks.run_benchmark_shard`` task on the ``background`` lane's queue, the workers write sentence rows
to the database, and this command waits, then merges them into the same ``results.jsonl``. Both modes end
with ``summary.md``, ``summary.json`` and ``figure.png`` in ``OUT`` and the run stored in the database
(shown at ``/benchmarks/``). Docs: docs/BENCHMARK.md.

After ``--warmup`` images (default 3) a single-process run prints its estimate of the whole run (wall time,
peak memory, model calls) and goes on without asking; at the end it prints the measured wall time beside
it. ``--distributed`` shows each worker's rate. ``--profile`` prints where the time went.
``--schedule per-ref`` redoes the image-level work for every ref as the peers' code does: for measuring
what our per-image schedule saves (docs/PERFORMANCE.md), not for scores.
"""

from __future__ import annotations

import signal
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


class _Terminated(Exception):  # noqa: N818  (a signal, not an error)
    """SIGTERM arrived: the run stops between two images and is marked interrupted."""


def _terminated(signum: int, frame: Any) -> None:
    raise _Terminated


class _Beat:
    """Calls ``beat`` at most every ``interval`` seconds (the run's heartbeat in the database)."""

    def __init__(self, beat: Any, interval: float = 10.0) -> None:
        self.beat, self.interval, self.last = beat, interval, time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            self.beat()


class Command(BaseCommand):
    help = "Benchmark pipelines on RefCOCO / RefCOCO+ / RefCOCOg (REFER files as published). See docs/BENCHMARK.md."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dataset", required=True, choices=["refcoco", "refcoco+", "refcocog"])
        parser.add_argument(
            "--split",
            default=None,
            help="val, testA, testB (RefCOCO/+), val, test (RefCOCOg umd); required to run",
        )
        parser.add_argument(
            "--pipeline",
            action="append",
            default=[],
            dest="pipelines",
            help="pipeline name; repeat for several; required to run",
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="validate the data set (refs, instances.json, images) without models; report every problem",
        )
        parser.add_argument(
            "--no-images", action="store_true", help="with --check: do not decode the images (faster)"
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
        parser.add_argument(
            "--schedule",
            choices=["per-image", "per-ref"],
            default="per-image",
            help="per-image (default: image work shared by every sentence) or per-ref (the peers' schedule: "
            "image work redone for every ref; for cost measurements only)",
        )
        parser.add_argument(
            "--profile",
            action="store_true",
            help="print where the time went (decode, proposals, features, ...)",
        )
        parser.add_argument(
            "--warmup",
            type=int,
            default=3,
            help="images measured before the whole run is estimated (default 3; 0: no estimate)",
        )
        parser.add_argument(
            "--prefetch", type=int, default=2, help="images decoded ahead in a background thread (default 2)"
        )

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
        from workers.engine.store.profiles import pipeline_profile

        if opts["check"]:
            self._check(opts)
            return
        missing = [flag for flag, key in (("--split", "split"), ("--pipeline", "pipelines")) if not opts[key]]
        if missing:
            raise CommandError(f"{' and '.join(missing)} required to run a benchmark (or use --check)")
        pipelines = list(dict.fromkeys(opts["pipelines"]))
        if opts["limit"] is not None and opts["limit"] < 1:
            raise CommandError(f"--limit must be at least 1, got {opts['limit']}")
        if opts["shard_images"] < 1:
            raise CommandError(f"--shard-images must be at least 1, got {opts['shard_images']}")
        if opts["warmup"] < 0 or opts["prefetch"] < 0:
            raise CommandError("--warmup and --prefetch must be 0 or more")
        unknown = [p for p in pipelines if p not in pipeline_names()]
        if unknown:
            raise CommandError(
                f"unknown pipeline(s) {', '.join(unknown)}; the catalogue offers: {', '.join(pipeline_names())}"
            )
        try:
            overrides = parse_config_overrides(opts["config_items"], pipelines)
            for pipeline in pipelines:  # refuse a bad key before any model loads or any shard is sent
                resolve_config(
                    pipeline,
                    overrides.get(pipeline) or None,
                    pipeline_profile(settings.RIS_ENGINE, pipeline).profile,
                )
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
            schedule=opts["schedule"],
        )
        out = opts["out"] or Path(settings.VAR_DIR) / "benchmarks" / (
            f"{spec.dataset}-{spec.split_by}-{spec.split}-{datetime.now():%Y%m%d-%H%M%S}"
        )
        try:
            session = BenchmarkSession(spec, out)
            meta = session.start(resume=opts["resume"], distributed=opts["distributed"])
        except (DatasetError, RunFolderError, ValueError) as exc:
            raise CommandError(str(exc)) from exc

        stored = self._database_ready(opts)
        self._models_ready(pipelines)
        run = None
        if stored:
            run = (
                BenchmarkRun.objects.filter(pk=meta.get("db_run_id")).first()
                if meta.get("db_run_id")
                else None
            )
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
        if run is not None:
            services.run_attach(run=run)
        self._beat = _Beat(lambda: services.run_heartbeat(run=run) if run is not None else None)
        previous_term = signal.signal(signal.SIGTERM, _terminated)
        self.stdout.write(
            f"Benchmark run {f'#{run.pk}' if run else '(not stored)'}: {spec.dataset} ({spec.split_by}) "
            f"{spec.split}, {session.n_images} images, {session.n_sentences} sentences, pipelines "
            f"{', '.join(pipelines)} -> {out}"
        )
        self._run_info: dict[str, Any] = {}
        try:
            if opts["distributed"]:
                configs = self._run_distributed(run, session, opts)
                records = self._merge_from_db(run, session)
            else:
                engine = build_engine(opts["device"])
                configs = self._run_local(session, engine, opts)
                records = session.folder.results.read()
                if run is not None:
                    services.sentence_results_store(run=run, records=[r.to_json() for r in records])
            extra = {
                "db_run_id": run.pk if run else None,
                "distributed": bool(opts["distributed"]),
                **self._run_info,
            }
            report = session.finish(records, configs, extra)
            if run is not None:
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
        except (KeyboardInterrupt, _Terminated) as stop:
            how = "SIGTERM" if isinstance(stop, _Terminated) else "Ctrl-C"
            if run is not None:
                services.run_set_state(
                    run=run,
                    state=BenchmarkRun.State.INTERRUPTED,
                    error=f"interrupted ({how}); resume with --resume",
                )
            resume = " ".join(a for a in sys.argv[1:] if a != "--resume")
            self.stderr.write(
                f"\nInterrupted. Results so far are in {session.folder.results.path}"
                + (" and the shards already sent keep running on the workers" if opts["distributed"] else "")
                + f". Continue with: python manage.py {resume} --resume"
            )
            raise SystemExit(130) from None
        except CommandError as exc:
            if run is not None:
                services.run_set_state(run=run, state=BenchmarkRun.State.FAILED, error=str(exc))
            raise
        except Exception as exc:
            if run is not None:
                services.run_set_state(
                    run=run, state=BenchmarkRun.State.FAILED, error=f"{type(exc).__name__}: {exc}"
                )
            if isinstance(exc, DatasetError | ValueError | EngineError | IncompleteRunError):
                raise CommandError(str(exc)) from exc
            raise
        finally:
            signal.signal(signal.SIGTERM, previous_term)
        self.stdout.write(report.markdown)
        where = (
            f"stored as run #{run.pk} (page /benchmarks/{run.pk}/)"
            if run is not None
            else "not stored in the database (see above); once it is reachable, store this run with: "
            f"python manage.py {' '.join(a for a in sys.argv[1:] if a != '--resume')} --resume"
        )
        self.stdout.write(
            f"Wrote {report.paths['markdown']}, {report.paths['json']}, {report.paths['figure']} and "
            f"{session.folder.results.path}; {where}."
        )

    # -------------------------------------------------------------------------------------------------
    def _database_ready(self, opts: dict[str, Any]) -> bool:
        """Whether the run can be stored: applies the migrations a fresh database lacks (a clone where only
        ``make test`` ran has no tables yet); ``False``, with one line saying why, when the database cannot
        be reached (a single-process run then writes its report files only)."""
        from django.core.management import call_command
        from django.db import DatabaseError, connections
        from django.db.migrations.executor import MigrationExecutor

        connection = connections["default"]
        where = connection.settings_dict.get("NAME")
        if connection.vendor == "sqlite" and where and str(where) != ":memory:":
            Path(where).parent.mkdir(parents=True, exist_ok=True)  # var/ of a fresh clone
        try:
            executor = MigrationExecutor(connection)
            plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
            if plan:
                self.stdout.write(
                    f"The database ({where}) lacks {len(plan)} migration(s); applying them first "
                    "(python manage.py migrate)."
                )
                call_command("migrate", interactive=False, verbosity=0)
            return True
        except DatabaseError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if opts["distributed"]:
                raise CommandError(
                    f"--distributed needs the database, which cannot be reached ({reason}); start it "
                    "(DATABASE_URL) or run without --distributed"
                ) from None
            self.stderr.write(
                f"The database ({where}) cannot be reached ({reason}): the report is written to files only."
            )
            return False

    def _models_ready(self, pipelines: list[str]) -> None:
        """Put the models the offline store provides (MobileSAM, spaCy, tiny stand-ins) in place when a
        pipeline needs them and they are missing, and say in one line when pipelines rank with stand-ins."""
        from workers.engine.methods.catalogue import pipeline_entry
        from workers.engine.store.catalogue import catalogue_entry
        from workers.engine.store.ensure import ensure
        from workers.engine.store.profiles import (
            config_models,
            model_on_disk,
            pipeline_profile,
            profile_notice,
            store_for,
        )

        engine = settings.RIS_ENGINE
        store = store_for(engine)
        wanted = [
            name
            for pipeline in pipelines
            for name in config_models(
                pipeline_entry(pipeline).default_config(pipeline_profile(engine, pipeline, store).profile)
            )
        ]
        offline_kinds = ("package", "tiny")
        if any(not model_on_disk(store, n) and catalogue_entry(n).kind in offline_kinds for n in wanted):
            self.stdout.write(f"Preparing the model store at {store.root} (python manage.py models ensure):")
            for line in ensure(store):
                self.stdout.write(f"  {line}")
        notice = profile_notice(engine, store)
        if notice:
            self.stderr.write(f"Notice: {notice}")

    # -------------------------------------------------------------------------------------------------
    def _check(self, opts: dict[str, Any]) -> None:
        """``--check``: every problem of the data set, one per line; exit status 1 when there is any."""
        from workers.engine.data.check import check_dataset

        with self._progress(None, 0, opts, "checking", unit=" steps") as bar:
            report = check_dataset(
                opts["data_root"],
                opts["dataset"],
                split_by=[opts["split_by"]] if opts["split_by"] else None,
                image_dir=opts["image_dir"],
                text_field=opts["text_field"],
                check_images=not opts["no_images"],
                on_step=lambda: bar.update(1),
            )
        for problem in report.problems:
            self.stdout.write(str(problem))
        counts = (
            f"{report.n_refs} refs, {report.n_sentences} sentences, {report.n_annotations} annotations, "
            f"{report.n_images} images"
        )
        if report.problems:
            raise CommandError(
                f"{len(report.problems)} problem(s) in {opts['dataset']} ({counts}); see above"
            )
        self.stdout.write(f"{opts['dataset']}: no problems ({counts})")

    def _progress(
        self, total: int | None, initial: int, opts: dict[str, Any], desc: str, unit: str = "sent"
    ) -> Any:
        from tqdm import tqdm

        return tqdm(
            total=total,
            initial=initial,
            unit=unit,
            desc=desc,
            disable=opts["no_progress"],
            file=sys.stderr,
            dynamic_ncols=True,
            smoothing=0.0,  # the run's average rate: images differ too much for a moving average's ETA
        )

    def _run_local(self, session: Any, engine: Any, opts: dict) -> dict[str, dict]:
        """Run in this process; the configs each pipeline ran."""
        from workers.engine.data.refer import MissingImageError

        initial = sum(len(v) for v in session.done().values())
        if initial:
            self.stdout.write(
                f"Resuming: {initial} of {session.total} sentence results already in {session.folder.results.path}"
            )
        from workers.engine.data.benchmark.estimate import RunEstimator
        from workers.engine.data.benchmark.profile import RunProfile

        images, pairs = session.pending_images()
        estimator = RunEstimator(images=images, sentences=pairs, warmup=max(opts["warmup"], 1))
        profile = RunProfile() if opts["profile"] else None
        started = time.perf_counter()
        with self._progress(session.total, initial, opts, "benchmark") as bar:

            def on_image(done: Any) -> None:
                estimate = estimator.observe(done.wall_seconds, done.model_calls)
                if estimate is not None and opts["warmup"] > 0:
                    bar.write(estimate.line(), file=self.stdout._out)

            def progress(n: int) -> None:
                bar.update(n)
                self._beat()

            try:
                outcome = session.run_local(
                    engine,
                    on_progress=progress,
                    on_image=on_image,
                    profile=profile,
                    prefetch=opts["prefetch"],
                )
            except MissingImageError as exc:
                raise CommandError(str(exc)) from exc
        wall = time.perf_counter() - started
        if estimator.estimate is not None and opts["warmup"] > 0:
            estimator.estimate.measured_wall_seconds = wall
            self.stdout.write(
                f"Wall time: {wall:.1f} s measured, {estimator.estimate.wall_seconds:.1f} s estimated "
                f"after {estimator.estimate.basis_images} image(s) (the estimate was "
                f"{abs(100 * (estimator.estimate.error or 0)):.0f} % "
                f"{'above' if (estimator.estimate.error or 0) >= 0 else 'below'} the measured time)"
            )
            self._run_info["estimate"] = estimator.estimate.to_json()
        if profile is not None:
            profile.wall_seconds = wall
            self.stdout.write("Where the time went:\n" + profile.table())
            self._run_info["profile"] = profile.to_json()
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
                self._beat()
                count = selectors.sentence_results_count(run=run)
                bar.update(count - bar.n)
                rates = selectors.worker_rates(run=run)
                if rates:
                    bar.set_postfix_str(
                        ", ".join(f"{w} {r['sentences_per_second']:.2f} sent/s" for w, r in rates.items()),
                        refresh=False,
                    )
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
        rates = selectors.worker_rates(run=run)
        for worker, rate in rates.items():
            self.stdout.write(
                f"Worker {worker}: {rate['sentences']} sentences in {rate['seconds']:.1f} s "
                f"({rate['sentences_per_second']:.2f} sentences/s, {rate['shards']} shard(s))"
            )
        self._run_info["workers"] = rates
        configs = selectors.shard_configs(run=run)
        for pipeline in session.spec.pipelines:
            if pipeline not in configs:  # every shard found its sentences done: nothing ran this time
                from workers.engine.methods.catalogue import resolve_config
                from workers.engine.store.profiles import pipeline_profile

                configs[pipeline] = resolve_config(
                    pipeline,
                    session.spec.configs.get(pipeline) or None,
                    pipeline_profile(settings.RIS_ENGINE, pipeline).profile,
                ).to_dict()
        return configs

    def _merge_from_db(self, run: Any, session: Any) -> list:
        from server.benchmarks import selectors
        from workers.engine.data.benchmark.results import SentenceResult

        records = [SentenceResult.from_json(r) for r in selectors.sentence_results_records(run=run)]
        session.merge(records)
        return records
