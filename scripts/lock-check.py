#!/usr/bin/env python3
"""Keep the three dependency locks consistent with each other and with ``pyproject.toml``.

The sets (``pyproject.toml``): ``dependencies`` is the web set (the web image: gunicorn, migrate,
collectstatic, beat, the light worker, Flower; never torch), the ``worker`` extra adds the engine (the GPU
worker image), the ``dev`` extra adds tests and lint. Each has an exact-pin lock under ``requirements/``:

- ``dev.lock``    every pin (web + worker + dev): the one a developer's ``.venv`` installs, and the only
                  lock edited by hand;
- ``worker.lock`` the dependency closure of web + worker, cut out of ``dev.lock`` (same versions);
- ``web.lock``    the dependency closure of the web set, cut out of ``dev.lock`` (same versions).

Usage::

    python scripts/lock-check.py           # check; prints each problem and exits 1 if there is one
    python scripts/lock-check.py --write   # rewrite web.lock and worker.lock from dev.lock, then check

Both read each pinned distribution's requirements from the running interpreter's installed metadata, so run
them with the project venv (``.venv/bin/python``, which ``make install`` fills from ``dev.lock``); a pin that
is not installed at its version there is reported, never guessed. Markers are evaluated for the images'
platform (Linux x86_64) and the running Python (3.11, as in the images). What is checked:

1. every line of a lock is ``name==version`` and no name appears twice;
2. every pin of ``web.lock`` is in ``worker.lock`` with the same version, and every pin of ``worker.lock``
   in ``dev.lock``;
3. ``web.lock`` holds no torch, torchvision, triton, transformers, diffusers, open_clip, spaCy, nvidia-* or
   cuda-* package;
4. every requirement a set names in ``pyproject.toml`` is pinned in the set's lock at a version it accepts;
5. each lock is exactly the dependency closure of its sets (nothing missing, nothing extra), so
   ``pip install --no-deps -r <lock>`` gives a complete environment that ``pip check`` accepts.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # not the project venv
    sys.exit("lock-check: run it with the project venv (.venv/bin/python), which has `packaging`")

ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = ROOT / "requirements"

# Which sets each lock holds, smallest first; each lock must be a subset of the next.
LOCK_SETS: dict[str, tuple[str, ...]] = {
    "web": ("web",),
    "worker": ("web", "worker"),
    "dev": ("web", "worker", "dev"),
}
# Never in the web image (canonical names; a trailing '-' is a prefix).
WEB_FORBIDDEN = (
    "torch",
    "torchvision",
    "triton",
    "transformers",
    "diffusers",
    "open-clip-torch",
    "spacy",
    "nvidia-",
    "cuda-",
)
# Installed by the venv itself, never pinned (pip freeze leaves them out too).
INSTALLER_PACKAGES = {"pip", "setuptools", "wheel"}
# The images' platform: CPython 3.11 on Linux x86_64 (python:3.11-slim and the CUDA worker image). The
# Python version markers come from the running interpreter (a 3.11 one, checked in main).
TARGET_PLATFORM = {
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_system": "Linux",
    "sys_platform": "linux",
}
HEADERS = {
    "web": "Web image set (pyproject `dependencies`): gunicorn, migrate, collectstatic, beat, light worker,\n"
    "# Flower. No torch. Generated from requirements/dev.lock by scripts/lock-check.py --write: do not edit.",
    "worker": "GPU worker image set: the web set plus the `worker` extra (the engine). Generated from\n"
    "# requirements/dev.lock by scripts/lock-check.py --write: do not edit.",
    "dev": "Every pin: web + worker + dev sets; a developer's .venv installs this one. Edit pins here only,\n"
    "# then run `.venv/bin/python scripts/lock-check.py --write` to cut web.lock and worker.lock out of it.",
}


class LockError(Exception):
    """A lock or the metadata it needs is not usable; the message names the file and the line or package."""


@dataclass(frozen=True)
class Pin:
    """One ``name==version`` line: ``name`` as written, ``key`` its canonical form."""

    name: str
    version: str

    @property
    def key(self) -> str:
        return canonicalize_name(self.name)


def lock_path(lock: str) -> Path:
    return LOCK_DIR / f"{lock}.lock"


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def lock_read(path: Path) -> dict[str, Pin]:
    """Pins of one lock file by canonical name. Raises ``LockError`` naming the file and line."""
    if not path.is_file():
        raise LockError(f"{_shown(path)} is missing")
    pins: dict[str, Pin] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip() or any(c in line for c in "<>!~;[ @,"):
            raise LockError(f"{_shown(path)}:{number}: {raw!r} is not an exact pin name==version")
        pin = Pin(name.strip(), version.strip())
        if pin.key in pins:
            raise LockError(f"{_shown(path)}:{number}: {pin.name} is pinned twice")
        pins[pin.key] = pin
    return pins


def sets_read(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, list[Requirement]]:
    """The dependency sets of ``pyproject.toml``: ``web`` (``dependencies``), ``worker`` and ``dev`` extras."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    raw = {"web": project.get("dependencies", []), "worker": extras.get("worker"), "dev": extras.get("dev")}
    out: dict[str, list[Requirement]] = {}
    for name, items in raw.items():
        if items is None:
            raise LockError(f"pyproject.toml has no [project.optional-dependencies] {name}")
        try:
            out[name] = [Requirement(item) for item in items]
        except InvalidRequirement as error:
            raise LockError(f"pyproject.toml, set {name}: {error}") from error
    return out


def _applies(requirement: Requirement, extra: str = "") -> bool:
    if requirement.marker is None:
        return True
    return requirement.marker.evaluate({**default_environment(), **TARGET_PLATFORM, "extra": extra})


def _installed_requires(pin: Pin) -> list[Requirement]:
    try:
        dist = metadata.distribution(pin.name)
    except metadata.PackageNotFoundError as error:
        raise LockError(
            f"{pin.name}=={pin.version} is not installed in {sys.prefix}: run this with the project venv "
            "(make install), which holds every pin of dev.lock"
        ) from error
    if dist.version != pin.version:
        raise LockError(
            f"{pin.name} is pinned at {pin.version} but {dist.version} is installed in {sys.prefix}: "
            "run make install first"
        )
    return [Requirement(text) for text in dist.requires or []]


def closure(roots: Iterable[Requirement], pins: dict[str, Pin]) -> dict[str, Pin]:
    """Every pin that ``roots`` need, directly or through others, with the extras they ask for.

    Raises ``LockError`` when a needed distribution has no pin in ``pins`` or its metadata is missing.
    """
    needed: dict[str, Pin] = {}
    seen: set[tuple[str, str]] = set()
    todo: list[tuple[Requirement, str]] = [(req, "pyproject.toml") for req in roots]
    while todo:
        requirement, wanted_by = todo.pop()
        key = canonicalize_name(requirement.name)
        if key in INSTALLER_PACKAGES:
            continue
        pin = pins.get(key)
        if pin is None:
            raise LockError(f"{requirement.name} (needed by {wanted_by}) is not pinned in dev.lock")
        needed[key] = pin
        for extra in ("", *sorted(requirement.extras)):
            if (key, extra) in seen:
                continue
            seen.add((key, extra))
            for child in _installed_requires(pin):
                if _applies(child, extra):
                    todo.append((child, f"{pin.name}{f'[{extra}]' if extra else ''}"))
    return needed


def _forbidden(key: str) -> bool:
    return any(key.startswith(word) if word.endswith("-") else key == word for word in WEB_FORBIDDEN)


def problems_find(locks: dict[str, dict[str, Pin]], sets: dict[str, list[Requirement]]) -> list[str]:
    """Every inconsistency between the locks and the sets, in words (empty when all is well)."""
    problems: list[str] = []
    order = list(LOCK_SETS)
    for small, big in zip(order, order[1:], strict=False):
        for key, pin in sorted(locks[small].items()):
            other = locks[big].get(key)
            if other is None:
                problems.append(f"{pin.name}=={pin.version} is in {small}.lock but not in {big}.lock")
            elif other.version != pin.version:
                problems.append(
                    f"{pin.name} is {pin.version} in {small}.lock but {other.version} in {big}.lock"
                )
    for key, pin in sorted(locks["web"].items()):
        if _forbidden(key):
            problems.append(f"web.lock pins {pin.name}=={pin.version}: the web image must not install it")
    for lock, names in LOCK_SETS.items():
        for set_name in names:
            for requirement in sets[set_name]:
                pin = locks[lock].get(canonicalize_name(requirement.name))
                if pin is None:
                    problems.append(f"{requirement} (set {set_name}) has no pin in {lock}.lock")
                elif not requirement.specifier.contains(pin.version, prereleases=True):
                    problems.append(
                        f"{lock}.lock pins {pin.name}=={pin.version}, set {set_name} wants {requirement}"
                    )
    if problems:
        return problems  # the closure below assumes the pins are consistent
    for lock, names in LOCK_SETS.items():
        try:
            want = closure([req for name in names for req in sets[name]], locks["dev"])
        except LockError as error:
            problems.append(str(error))
            continue
        for key in sorted(want.keys() - locks[lock].keys()):
            problems.append(f"{lock}.lock lacks {want[key].name}=={want[key].version}, which its sets need")
        for key in sorted(locks[lock].keys() - want.keys()):
            pin = locks[lock][key]
            problems.append(f"{lock}.lock pins {pin.name}=={pin.version}, which none of its sets needs")
    return problems


def lock_write(lock: str, pins: Iterable[Pin]) -> None:
    lines = [f"# {HEADERS[lock]}"] + [f"{p.name}=={p.version}" for p in sorted(pins, key=lambda p: p.key)]
    lock_path(lock).write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite web.lock and worker.lock from dev.lock")
    args = parser.parse_args(argv)
    if sys.version_info[:2] != (3, 11):
        print(f"lock-check: run it with the project's Python 3.11 (.venv/bin/python), not {sys.version}")
        return 1
    try:
        sets = sets_read()
        if args.write:
            dev = lock_read(lock_path("dev"))
            for lock in ("web", "worker"):
                lock_write(lock, closure([r for name in LOCK_SETS[lock] for r in sets[name]], dev).values())
                print(f"wrote {_shown(lock_path(lock))}")
        locks = {lock: lock_read(lock_path(lock)) for lock in LOCK_SETS}
    except LockError as error:
        print(f"lock-check: {error}", file=sys.stderr)
        return 1
    problems = problems_find(locks, sets)
    for problem in problems:
        print(f"lock-check: {problem}", file=sys.stderr)
    if not problems:
        sizes = ", ".join(f"{lock}.lock {len(pins)} pins" for lock, pins in locks.items())
        print(f"lock-check: consistent ({sizes})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
