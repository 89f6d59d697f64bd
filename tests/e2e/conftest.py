"""Browser tests: Debian's Chromium driven by Playwright against a live Django server, with a REAL Celery
worker subprocess on real Redis and PostgreSQL and the real engine (real MobileSAM, tiny CLIP).

Fixtures:
- ``e2e_models`` (session): a model store made by ``python manage.py models ensure`` (MobileSAM from its
  package, tiny random stand-ins for the rest), kept in pytest's cache folder so a second run only checks it.
- ``celery_worker`` (module): ``celery worker --pool solo`` on a queue of its own (the app's task routes
  point there while it runs, so no other worker on the broker takes these messages and it takes no one
  else's; it stops when its module ends), on the test database (its name taken from the live
  connection), the same broker as this process, the shared media folder and the model store. Its log goes to ``$RIS_TEST_ARTIFACTS/e2e/worker.log``.
- ``browser`` (session) / ``page`` (per test): headless Chromium at /usr/bin/chromium; never ``playwright
  install``. ``page`` is signed out; use ``sign_in(page, live_server)``.
- ``shot(page, name)``: a screenshot under ``$RIS_TEST_ARTIFACTS/e2e/`` (default ``test-artifacts/``).

These tests need PostgreSQL and a Redis broker (``make test`` sets DATABASE_URL and CELERY_BROKER_URL): a
worker in another process cannot see SQLite's in-memory test database, so they fail with that message
otherwise. Uploads do not queue the background warm-up here (``RIS_PREPARE_ON_UPLOAD`` off), so the one
worker starts on the test's job at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

# Playwright's sync API runs an event loop in this thread; the ORM calls the tests make to check what
# the pages stored are plain synchronous calls and safe here.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "pw-for-tests"


def artifacts_dir() -> Path:
    root = Path(os.environ.get("RIS_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "e2e"
    root.mkdir(parents=True, exist_ok=True)
    return root


def shot(page, name: str) -> Path:
    """Save a full-page screenshot ``<name>.png`` among the test run's artifacts."""
    path = artifacts_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page, live_server, username: str = "alice", password: str = PASSWORD) -> None:
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


def _require_services() -> None:
    from django.conf import settings

    engine = settings.DATABASES["default"]["ENGINE"]
    if "postgresql" not in engine:
        pytest.fail(
            "The browser tests run a real Celery worker in another process, which needs PostgreSQL: run them "
            "through `make test` (DATABASE_URL=postgres://postgres@127.0.0.1:5432/ris, "
            "CELERY_BROKER_URL=redis://127.0.0.1:6379/14)."
        )
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.fail("The browser tests need a Redis broker: set CELERY_BROKER_URL as `make test` does.")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not at {CHROMIUM}: install Debian's chromium (scripts/ensure-browser.sh).")


@pytest.fixture(scope="session")
def e2e_models(request, tmp_path_factory) -> Path:
    cache = request.config.cache  # None under -p no:cacheprovider: then a fresh store for this run
    folder = Path(cache.mkdir("ris-e2e-models")) if cache is not None else tmp_path_factory.mktemp("models")
    env = {**os.environ, "RIS_MODEL_DIR": str(folder)}
    done = subprocess.run(
        [sys.executable, "manage.py", "models", "ensure"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.fail(f"`manage.py models ensure` failed:\n{done.stdout}\n{done.stderr}")
    return folder


@pytest.fixture(scope="session")
def e2e_media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e-media")


@pytest.fixture(autouse=True)
def media_root(settings, e2e_media) -> Path:
    """One media folder for the live server and the worker (overrides the suite's per-test folder)."""
    settings.MEDIA_ROOT = e2e_media
    settings.RIS_PREPARE_ON_UPLOAD = False
    return e2e_media


def _database_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    auth = quote(s["USER"] or "postgres")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"])
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def _purge_queues(queues: tuple[str, ...]) -> None:
    from workers.celery_app import app

    with app.connection_for_write() as conn:
        for queue in queues:
            with contextlib.suppress(Exception):  # the queue may not exist yet
                conn.default_channel.queue_purge(queue)


@pytest.fixture(scope="module")
def celery_worker(
    django_db_setup, django_db_blocker, e2e_models, e2e_media, tmp_path_factory
) -> Iterator[subprocess.Popen]:
    _require_services()
    from django.conf import settings

    with django_db_blocker.unblock():
        database_url = _database_url()
    from workers.celery_app import app

    # A queue of this worker's own: no other worker on the broker can take these tests' messages.
    queue = f"e2e-{uuid.uuid4().hex[:8]}"
    old_routes = app.conf.task_routes
    app.conf.update(task_routes={name: {"queue": queue} for name in old_routes})
    log_path = artifacts_dir() / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "RIS_MEDIA_ROOT": str(e2e_media),
        "RIS_MODEL_DIR": str(e2e_models),
        "RIS_CACHE_DIR": str(tmp_path_factory.mktemp("e2e-cache")),
        "RIS_DEVICE": "cpu",
        "RIS_MODEL_PROFILE": "tiny",
        "RIS_JOB_SOFT_TIME_LIMIT": "300",
        "RIS_JOB_TIME_LIMIT": "320",
    }
    name = f"{queue}@%h"
    log = log_path.open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queue, "--pool", "solo",
         "--concurrency", "1", "-n", name, "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        # Generous: on a loaded machine the worker's imports alone take minutes; it fails at once if it exits.
        deadline = time.monotonic() + 900
        while " ready." not in log_path.read_text():
            if worker.poll() is not None:
                pytest.fail(
                    f"The Celery worker exited with {worker.returncode}:\n{log_path.read_text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"The Celery worker did not start in 900 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.3)
        yield worker
    finally:
        app.conf.update(task_routes=old_routes)
        _purge_queues((queue,))
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        log.close()


@pytest.fixture(scope="session")
def browser():
    _require_services()
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield chromium
    chromium.close()
    playwright.stop()


@pytest.fixture
def page(browser, live_server, transactional_db):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    context.set_default_timeout(90_000)  # each page step; generous for a loaded machine
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors
    yield page
    context.close()
