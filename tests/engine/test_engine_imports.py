"""The engine is pure PyTorch: importing every engine module pulls in neither Django nor Celery; the modules
the web process reads (settings, configs, catalogues) pull in no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_no_engine_module_imports_django_or_celery() -> None:
    seen = _run(
        "import importlib, json, pkgutil, sys\n"
        "import workers.engine as engine\n"
        "names = [m.name for m in pkgutil.walk_packages(engine.__path__, 'workers.engine.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(json.dumps({'n': len(names), 'bad': sorted(m for m in sys.modules if m.split('.')[0] in "
        "('django', 'celery', 'kombu', 'rest_framework', 'server'))}))"
    )
    assert seen["n"] > 40  # every module of every room was imported
    assert seen["bad"] == []


def test_configs_catalogues_and_settings_are_torch_free() -> None:
    seen = _run(
        "import json, sys\n"
        "from workers.engine.core.settings import EngineSettings\n"
        "from workers.engine.methods.catalogue import pipeline_catalogue, resolve_config\n"
        "from workers.engine.store.catalogue import is_resolved_profile, profile_names\n"
        "from workers.engine.store.profiles import pipeline_profile, profile_notice\n"
        "settings = EngineSettings.from_env({})\n"
        "profile_notice(settings)\n"
        "schemas = {}\n"
        "for name, entry in pipeline_catalogue().items():\n"
        "    resolve_config(name, None, pipeline_profile(settings, name).profile)\n"
        "    for profile in profile_names():\n"
        "        if not is_resolved_profile(profile):\n"
        "            resolve_config(name, None, profile)\n"
        "    schemas[name] = entry.config_class().schema()\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'numpy_torch': 'torchvision' in sys.modules,"
        " 'pipelines': sorted(schemas)}))"
    )
    assert seen == {
        "torch": False,
        "numpy_torch": False,
        "pipelines": ["ensemble", "global_local", "grounded_sam3", "lgd", "refdiff", "tas"],
    }
