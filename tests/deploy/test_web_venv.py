"""The web set suffices: a throwaway venv built from ``requirements/web.lock`` alone runs what the web image
runs (manage.py check, migrate, collectstatic, ensure_admin, createsuperuser, the WSGI app serving the login
page, the API schema and a static file, gunicorn's config check, the beat's periodic tasks, Flower) and has
no torch.

How: ``python -m venv`` (no system site-packages), then ``pip install --no-deps -r requirements/web.lock``:
exactly the lock's pins and nothing resolved on the side, so a dependency the lock forgot is not fetched
silently but reported by ``pip check``. This is how the web image installs it too. It downloads the wheels
from the package index (or pip's cache), about a minute on a 2-core machine; ``-s`` prints each step's
seconds. The project's code comes from this checkout (the venv's Python runs in the repository root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WEB_LOCK = ROOT / "requirements" / "web.lock"
SECRET = "web-venv-test-secret-web-venv-test-secret-0000"


@dataclass
class WebVenv:
    """A venv holding only web.lock, and the environment (temporary SQLite, var dir) to run the project in."""

    python: Path
    env: dict[str, str]
    var: Path

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        result = subprocess.run(
            [str(self.python), *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        shown = " ".join(args).replace("\n", " ")[:90]
        print(f"[web venv] {shown}: {time.monotonic() - started:.1f} s, rc {result.returncode}")
        return result

    def ok(self, *args: str, timeout: float = 300) -> str:
        result = self.run(*args, timeout=timeout)
        assert result.returncode == 0, (
            f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
        return result.stdout


def _clean_env(var: Path) -> dict[str, str]:
    """This process's environment without what points at the dev venv or the test services, plus the
    production settings the web image runs with (SQLite in ``var`` instead of PostgreSQL)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "DATABASE_URL")
        and not key.startswith(("CELERY_", "RIS_", "DJANGO_"))
    }
    env.update(
        RIS_ENV="production",
        DJANGO_SECRET_KEY=SECRET,
        DJANGO_ALLOWED_HOSTS="testserver,localhost,127.0.0.1",
        DJANGO_SECURE_COOKIES="false",
        RIS_VAR_DIR=str(var),
        RIS_STATIC_ROOT=str(var / "static"),
        RIS_MEDIA_ROOT=str(var / "media"),
        DATABASE_URL=f"sqlite:///{var / 'db.sqlite3'}",
        DJANGO_SETTINGS_MODULE="server.config.settings",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


@pytest.fixture(scope="module")
def web_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebVenv]:
    base = tmp_path_factory.mktemp("web-venv")
    venv, var = base / "venv", base / "var"
    var.mkdir()
    env = _clean_env(var)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    print(f"[web venv] python -m venv: {time.monotonic() - started:.1f} s")
    made = WebVenv(python=venv / "bin" / "python", env=env, var=var)
    try:
        made.ok(
            *("-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check"),
            *("--progress-bar", "off", "--quiet", "-r", str(WEB_LOCK)),
            timeout=900,
        )
        # What the web image's build runs before copying the code.
        made.ok("manage.py", "migrate", "--noinput")
        made.ok("manage.py", "collectstatic", "--noinput")
        print(f"[web venv] ready after {time.monotonic() - started:.1f} s")
        yield made
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_venv_holds_exactly_the_web_lock_complete_and_without_torch(web_venv: WebVenv) -> None:
    check = web_venv.run("-m", "pip", "check", "--disable-pip-version-check")
    assert check.returncode == 0, f"web.lock misses a dependency:\n{check.stdout}{check.stderr}"
    frozen = web_venv.ok("-m", "pip", "freeze", "--disable-pip-version-check", "--all")
    installed = {
        canonicalize_name(name): version
        for name, _, version in (line.partition("==") for line in frozen.splitlines() if "==" in line)
    }
    locked = {
        canonicalize_name(name): version
        for name, _, version in (
            line.partition("==") for line in WEB_LOCK.read_text().splitlines() if line and line[0] != "#"
        )
    }
    for tool in ("pip", "setuptools", "wheel"):
        installed.pop(tool, None)
    assert installed == locked
    out = web_venv.ok(
        "-c", "import importlib.util as u; print([m for m in ('torch', 'torchvision') if u.find_spec(m)])"
    )
    assert out.strip() == "[]"


def test_management_commands_of_the_web_image_run(web_venv: WebVenv) -> None:
    assert "no issues" in web_venv.ok("manage.py", "check")
    assert "No migrations to apply" in web_venv.ok("manage.py", "migrate", "--noinput")
    assert (web_venv.var / "static" / "css" / "app.css").is_file(), "collectstatic collected nothing"
    web_venv.env.update(RIS_ADMIN_USER="boss", RIS_ADMIN_PASSWORD="boss-password-for-tests")
    web_venv.ok("manage.py", "ensure_admin")
    web_venv.env.update(DJANGO_SUPERUSER_PASSWORD="second-password-for-tests")
    web_venv.ok(
        "manage.py", "createsuperuser", "--noinput", "--username", "second", "--email", "s@example.org"
    )
    users = web_venv.ok(
        "-c",
        "import django; django.setup(); from django.contrib.auth.models import User; "
        "print(sorted(User.objects.filter(is_superuser=True).values_list('username', flat=True)))",
    )
    assert users.strip() == "['boss', 'second']"


SERVE_PROBE = """
import sys
from server.config.wsgi import application
from django.contrib.auth import get_user_model
from django.test import Client

client = Client()
page = client.get("/accounts/login/")
assert page.status_code == 200 and b'name="password"' in page.content, page.status_code
health = client.get("/healthz")
assert health.status_code == 200 and health.json() == {"status": "ok"}, health.content
css = client.get("/static/css/app.css")
assert css.status_code == 200, css.status_code
assert client.get("/api/schema/").status_code in (401, 403)
user = get_user_model().objects.create_user("probe", password="probe-password-for-tests")
client.force_login(user)
schema = client.get("/api/schema/")
assert schema.status_code == 200 and b"openapi:" in schema.content, schema.status_code
assert b"/api/projects/" in schema.content
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "torchvision", "open_clip", "transformers", "diffusers"))
assert not heavy, heavy
engine = sorted(name for name in sys.modules if name.startswith(("workers.engine.runtime", "workers.engine.hub")))
assert not engine, engine
print("served", application.__class__.__name__)
"""


def test_the_wsgi_app_serves_the_login_page_schema_and_static_files(web_venv: WebVenv) -> None:
    assert "served WSGIHandler" in web_venv.ok("-c", SERVE_PROBE)
    web_venv.ok("-m", "gunicorn", "--check-config", "server.config.wsgi:application")


CELERY_PROBE = """
import sys
import django
from workers.celery_app import app

django.setup()  # as Celery's Django fix-up does in a worker or beat process
from django.conf import settings

app.loader.import_default_modules()  # the task modules a worker imports (the light worker, the beat)
for entry in settings.CELERY_BEAT_SCHEDULE.values():
    print(entry["task"], app.tasks[entry["task"]]())
assert not [name for name in sys.modules if name.split(".")[0] == "torch" or name.startswith(("workers.engine.runtime", "workers.engine.hub"))]
"""


def test_the_beat_and_light_worker_tasks_and_flower_run(web_venv: WebVenv) -> None:
    out = web_venv.ok("-c", CELERY_PROBE)
    assert "workers.tasks.reconcile_jobs {" in out
    # Flower's celery subcommand is registered and loads with the app (compose runs it from the web image).
    flower = web_venv.ok("-m", "celery", "-A", "workers.celery_app", "flower", "--help")
    assert "monitoring and administrating Celery clusters" in flower
