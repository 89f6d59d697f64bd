"""The web process must never load torch: importing every server module, the URLConf and the task module
in a fresh interpreter leaves ``torch`` (and the engine) out of ``sys.modules``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, pkgutil, sys
import django
django.setup()
import server
failed = []
for info in pkgutil.walk_packages(server.__path__, "server."):
    try:
        importlib.import_module(info.name)
    except Exception as error:  # report, then fail below
        failed.append(f"{info.name}: {error!r}")
from django.urls import get_resolver
get_resolver().url_patterns
importlib.import_module("workers.celery_app")
for module in ("segmentation", "refine", "benchmark", "reconcile", "lifecycle", "engine_access"):
    importlib.import_module(f"workers.tasks.{module}")
loaded = sorted(name for name in sys.modules if name == "torch" or name.startswith(("torch.", "workers.engine.runtime")))
print("FAILED", failed)
print("LOADED", loaded[:5])
sys.exit(1 if failed or loaded else 0)
"""


def test_server_modules_and_urls_do_not_import_torch():
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "server.config.settings")
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
