"""Check out a peer's public repository at a named commit and stub what it imports but never uses.

Used by the fixture generators in this folder (``refdiff_fixtures.py``, ``tas_fixtures.py``); never by the
tests, which read only the JSON fixtures.

The checkout comes from a git mirror (``--mirror``: a bare repository of the peer, e.g. one made with
``git clone --mirror https://github.com/<owner>/<name>``) or an existing work tree (``--peer-dir``). The
commit is checked: a work tree must say so in a ``PEER_COMMIT`` file, or be the mirror's export.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any


def export(mirror: Path, commit: str) -> Path:
    """``git archive <commit>`` of a bare ``mirror`` into a fresh temporary folder; returns the folder."""
    target = Path(tempfile.mkdtemp(prefix="peer-"))
    archive = subprocess.run(
        ["git", f"--git-dir={mirror}", "archive", commit], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    (target / "PEER_COMMIT").write_text(commit + "\n", encoding="ascii")
    return target


def checkout(mirror: str | None, peer_dir: str | None, commit: str) -> Path:
    """The peer's source folder at ``commit`` (exported from ``mirror`` or given as ``peer_dir``)."""
    if peer_dir:
        folder = Path(peer_dir)
        marker = folder / "PEER_COMMIT"
        if not marker.is_file() or marker.read_text(encoding="ascii").strip() != commit:
            raise SystemExit(f"{folder} is not an export of commit {commit} (no matching PEER_COMMIT file)")
        return folder
    if not mirror:
        raise SystemExit("give --mirror (a bare clone of the peer) or --peer-dir")
    return export(Path(mirror), commit)


def stub(name: str, **attributes: Any) -> types.ModuleType:
    """Install an empty module ``name`` (and its parents) in ``sys.modules`` with ``attributes``."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            module = types.ModuleType(sub)
            module.__dict__["__peer_stub__"] = True
            sys.modules[sub] = module
            if i > 1:
                setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], module)
    module = sys.modules[name]
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


def unused(*_args: Any, **_kwargs: Any) -> Any:
    """Stands for an imported name the peer's code never calls on the paths we run."""
    raise AssertionError("a stub of an unused import was called")
