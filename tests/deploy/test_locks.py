"""The dependency locks (requirements/web.lock, worker.lock, dev.lock) agree with each other and with
pyproject.toml, and the web process's code imports nothing that web.lock does not install.

``scripts/lock-check.py`` reads each pin's requirements from the installed metadata, so these tests run in
the project venv (which ``make install`` fills from dev.lock, every pin)."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lock_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_check", ROOT / "scripts" / "lock-check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["lock_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def locks(lock_check: ModuleType) -> dict:
    return {name: lock_check.lock_read(lock_check.lock_path(name)) for name in lock_check.LOCK_SETS}


@pytest.fixture(scope="module")
def sets(lock_check: ModuleType) -> dict:
    return lock_check.sets_read()


def _with(pins: dict, lock_check: ModuleType, name: str, version: str) -> dict:
    pin = lock_check.Pin(name, version)
    return {**pins, pin.key: pin}


def _without(pins: dict, name: str) -> dict:
    return {key: pin for key, pin in pins.items() if key != canonicalize_name(name)}


def test_the_locks_are_consistent() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lock-check.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "consistent" in result.stdout


def test_web_lock_is_small_and_has_no_engine(locks: dict) -> None:
    web, worker = locks["web"], locks["worker"]
    for name in ("torch", "torchvision", "transformers", "diffusers", "open-clip-torch", "spacy", "triton"):
        assert name not in web and name in worker, name
    assert not [key for key in web if key.startswith(("nvidia-", "cuda-"))]
    for name in (
        "django",
        "gunicorn",
        "celery",
        "redis",
        "psycopg",
        "psycopg-binary",
        "flower",
        "pycocotools",
    ):
        assert name in web, name
    assert len(web) < len(worker) < len(locks["dev"])


def test_worker_lock_keeps_the_cuda_torch_build_of_the_old_single_lock(locks: dict) -> None:
    worker = locks["worker"]
    assert worker["torch"].version == "2.14.1" and worker["torchvision"].version == "0.29.1"
    # PyPI's torch 2.14.1 for Linux is the CUDA 13.0 build: its libraries come pinned with it.
    assert worker["nvidia-cudnn-cu13"].version and worker["cuda-toolkit"].version.startswith("13.0.")


def test_torch_in_the_web_lock_is_reported(lock_check: ModuleType, locks: dict, sets: dict) -> None:
    bad = {**locks, "web": _with(locks["web"], lock_check, "torch", "2.14.1")}
    problems = lock_check.problems_find(bad, sets)
    assert any("web.lock pins torch==2.14.1" in p for p in problems), problems
    bad = {**locks, "web": _with(locks["web"], lock_check, "nvidia-nccl-cu13", "2.30.7")}
    assert any("nvidia-nccl-cu13" in p for p in lock_check.problems_find(bad, sets))


def test_a_version_differing_between_locks_is_reported(
    lock_check: ModuleType, locks: dict, sets: dict
) -> None:
    bad = {**locks, "worker": _with(locks["worker"], lock_check, "Django", "5.2.1")}
    problems = lock_check.problems_find(bad, sets)
    assert any("Django is 5.2.19 in web.lock but 5.2.1 in worker.lock" in p for p in problems), problems


def test_a_web_pin_missing_from_the_worker_lock_is_reported(
    lock_check: ModuleType, locks: dict, sets: dict
) -> None:
    bad = {**locks, "worker": _without(locks["worker"], "whitenoise")}
    problems = lock_check.problems_find(bad, sets)
    assert any("whitenoise==" in p and "not in worker.lock" in p for p in problems), problems


def test_a_missing_transitive_dependency_is_reported(lock_check: ModuleType, locks: dict, sets: dict) -> None:
    # vine comes only through celery and kombu: pyproject never names it.
    bad = {name: _without(pins, "vine") for name, pins in locks.items()}
    problems = lock_check.problems_find(bad, sets)
    assert any("vine" in p and "not pinned in dev.lock" in p for p in problems), problems
    bad = {**locks, "web": _without(locks["web"], "vine"), "worker": _without(locks["worker"], "vine")}
    problems = lock_check.problems_find(bad, sets)
    assert any("web.lock lacks vine==" in p for p in problems), problems


def test_a_pin_no_set_needs_is_reported(lock_check: ModuleType, locks: dict, sets: dict) -> None:
    tqdm = locks["dev"]["tqdm"].version
    bad = {name: _with(pins, lock_check, "tqdm", tqdm) for name, pins in locks.items()}
    problems = lock_check.problems_find(bad, sets)
    assert f"web.lock pins tqdm=={tqdm}, which none of its sets needs" in problems, problems


def test_a_requirement_the_pin_does_not_satisfy_is_reported(
    lock_check: ModuleType, locks: dict, sets: dict
) -> None:
    from packaging.requirements import Requirement

    stricter = {**sets, "web": [*sets["web"], Requirement("django>=6")]}
    problems = lock_check.problems_find(locks, stricter)
    assert any("pins Django==5.2.19, set web wants django>=6" in p for p in problems), problems


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("torch>=2\n", "not an exact pin"),
        ("numpy==2.4.6\nNumPy==2.4.6\n", "pinned twice"),
        ("celery[redis]==5.7.0\n", "not an exact pin"),
    ],
)
def test_a_malformed_lock_is_refused_with_its_line(
    lock_check: ModuleType, tmp_path: Path, text: str, words: str
) -> None:
    path = tmp_path / "bad.lock"
    path.write_text(f"# a comment\n{text}")
    with pytest.raises(lock_check.LockError, match=words) as error:
        lock_check.lock_read(path)
    assert f"bad.lock:{text.count(chr(10)) + 1}" in str(error.value)


# The web image's code: everything under server/ and workers/ but the engine and the engine's management
# commands (models, benchmark, make_synthetic_refcoco), which run only in the worker image, plus the torch-free
# engine modules the web process does import (settings, configs, catalogues, the REFER writer), found by
# importing the web side in a fresh interpreter.
WORKER_ONLY = ("workers/engine/", "workers/cli/management/commands/")

_WEB_ENGINE_PROBE = """
import importlib, pkgutil, sys
import django
django.setup()
import server
for info in pkgutil.walk_packages(server.__path__, "server."):
    importlib.import_module(info.name)
from django.urls import get_resolver
get_resolver().url_patterns
from workers.engine.methods.catalogue import pipeline_catalogue
for entry in pipeline_catalogue().values():
    entry.config_class()
print(" ".join(sorted(m for m in sys.modules if m.startswith("workers.engine"))))
"""


def _web_engine_files() -> list[Path]:
    """The engine modules the web process imports (a subprocess imports every server module and every config)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "server.config.settings"}
    done = subprocess.run(
        [sys.executable, "-c", _WEB_ENGINE_PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    files = []
    for module in done.stdout.split():
        path = ROOT / (module.replace(".", "/") + ".py")
        files.append(path if path.is_file() else ROOT / module.replace(".", "/") / "__init__.py")
    return files


def _web_python_files() -> list[Path]:
    files = [ROOT / "manage.py"]
    for top in ("server", "workers"):
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if not relative.startswith(WORKER_ONLY):
                files.append(path)
    return files + _web_engine_files()


def _third_party_imports(path: Path) -> set[str]:
    """Top-level names of the modules a file imports (anywhere in it, lazy imports too), less stdlib and ours."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {
        name for name in names if name not in sys.stdlib_module_names and name not in ("server", "workers")
    }


def test_web_code_imports_only_packages_of_the_web_lock(locks: dict) -> None:
    files = _web_python_files()
    assert any(f.name == "celery_app.py" for f in files)
    engine = [f.relative_to(ROOT).as_posix() for f in files if "engine" in f.parts]
    assert "workers/engine/methods/catalogue.py" in engine and "workers/engine/core/settings.py" in engine
    assert not any(f.endswith(("runtime.py", "hub.py", "/pipeline.py", "/features.py")) for f in engine), (
        engine
    )
    providers = metadata.packages_distributions()
    web = locks["web"]
    outside = []
    for path in files:
        for module in sorted(_third_party_imports(path)):
            dists = {canonicalize_name(d) for d in providers.get(module, [])}
            if not dists & web.keys():
                where = ", ".join(sorted(dists)) or "no installed distribution"
                outside.append(f"{path.relative_to(ROOT)} imports {module} ({where})")
    assert not outside, "the web image would lack:\n" + "\n".join(outside)


def test_the_import_scan_sees_a_lazy_engine_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n\ndef f():\n    import torch.nn as nn\n    from PIL import Image\n")
    assert _third_party_imports(probe) == {"torch", "PIL"}
