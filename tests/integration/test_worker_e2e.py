"""One job end to end through a real Celery worker process on real Redis and PostgreSQL (not eager mode),
with the real engine and real MobileSAM on a real photo.

The test process serves the API (DRF test client) on the live test database (``transactional_db``, so
rows are committed and another process sees them); the worker is a separate ``celery worker`` process
pointed at the same test database, the same broker and the same media folder. The broker's queues are
purged first, so messages left by an earlier run can never claim this run's job ids.

Needs ``DATABASE_URL`` (PostgreSQL) and ``CELERY_BROKER_URL`` (Redis) in the environment: ``make test``
sets both.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from django.db import connection
from PIL import Image as PILImage

from tests.integration.probe_worker import database_url

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
PHOTO_SIDE = 256
STALL_S = 300  # seconds without any progress of the job or its worker's log
CEILING_S = 1800
FAST_CONFIG = {"amg": {"points_per_side": 5}, "features": {"shorter_side": 224}}  # 25 prompts: ~16 masks


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with what the tiny profile of global_local needs: real MobileSAM, spaCy, clip_tiny."""
    from workers.engine.store.fetch import fetch
    from workers.engine.store.manifest import ModelStore
    from workers.engine.store.tiny.writers import make_tiny

    root = tmp_path_factory.mktemp("models")
    store = ModelStore(root)
    fetch(store, "mobile_sam")
    fetch(store, "spacy_en")
    make_tiny(store, ["clip_tiny"])
    return root


@pytest.fixture
def worker(
    model_dir: Path,
    media_root: Path,
    tmp_path: Path,
    transactional_db,
    real_broker: str,
    require_postgres: None,
) -> Iterator[subprocess.Popen]:
    broker = real_broker
    artifacts = Path(os.environ.get("RIS_TEST_ARTIFACTS", tmp_path)) / "worker-e2e"
    artifacts.mkdir(parents=True, exist_ok=True)
    log_path = artifacts / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(connection.settings_dict),
        "CELERY_BROKER_URL": broker,
        "RIS_MEDIA_ROOT": str(media_root),
        "RIS_MODEL_DIR": str(model_dir),
        "RIS_CACHE_DIR": str(tmp_path / "cache"),
        "RIS_MODEL_PROFILE": "tiny",
        "RIS_DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    env.setdefault("DJANGO_SETTINGS_MODULE", "server.config.settings")
    command = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "-Q", "interactive,background,default", "--pool", "solo", "--concurrency", "1", "--loglevel", "INFO",
        "-n", f"e2e-{uuid.uuid4().hex[:8]}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log_path = log_path  # type: ignore[attr-defined]
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _worker_log(process: subprocess.Popen) -> str:
    return Path(process.log_path).read_text(errors="replace")[-6000:]  # type: ignore[attr-defined]


def _photo_jpeg() -> bytes:
    from skimage import data

    photo = PILImage.fromarray(data.astronaut()).resize(
        (PHOTO_SIDE, PHOTO_SIDE), PILImage.Resampling.BILINEAR
    )
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _wait_for_job(job_id: int, process: subprocess.Popen):
    from server.ris.models import SegmentationJob

    # Waits while the job moves (state, progress, heartbeat) or the worker logs; fails after STALL_S
    # without either, or after CEILING_S in all, or at once if the worker exits.
    started = last_change = time.monotonic()
    last = None
    while True:
        job = SegmentationJob.objects.get(pk=job_id)
        if job.state in ("succeeded", "failed", "cancelled"):
            return job
        if process.poll() is not None:
            pytest.fail(f"the worker exited with {process.returncode}:\n{_worker_log(process)}")
        now = time.monotonic()
        snapshot = (job.state, job.progress, job.heartbeat_at, Path(process.log_path).stat().st_size)  # type: ignore[attr-defined]
        if snapshot != last:
            last, last_change = snapshot, now
        if now - last_change > STALL_S or now - started > CEILING_S:
            pytest.fail(
                f"job {job_id} still {job.state} after {now - started:.0f} s "
                f"({now - last_change:.0f} s without progress):\n{_worker_log(process)}"
            )
        time.sleep(0.5)


def test_one_job_through_a_real_worker(worker, api_client, project, settings):
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.RIS_PREPARE_ON_UPLOAD = False  # the job itself must do the image work here
    upload = api_client.post(
        f"/api/projects/{project.pk}/images/",
        {"files": [SimpleUploadedFile("astronaut.jpg", _photo_jpeg(), content_type="image/jpeg")]},
        format="multipart",
    )
    assert upload.status_code == 201, upload.json()
    image = upload.json()["images"][0]

    created = api_client.post(
        f"/api/images/{image['id']}/expressions/",
        {"text": "the woman in the space suit", "pipeline": "global_local", "config": FAST_CONFIG},
        format="json",
    )
    assert created.status_code == 201, created.json()
    job_id = created.json()["job"]["id"]

    job = _wait_for_job(job_id, worker)
    (Path(worker.log_path).parent / "first-job-timings.json").write_text(json.dumps(job.timings, indent=1))
    assert job.state == "succeeded", f"{job.state}: {job.error}\n{_worker_log(worker)}"
    assert job.attempts == 1 and job.worker.startswith("e2e-") and job.progress == 1.0
    assert job.config["proposal_source"] == "mobile_sam" and job.config["amg"]["points_per_side"] == 5
    assert job.timings["engine"]["stages"]["proposals"]["calls"] == 1

    candidates = api_client.get(f"/api/jobs/{job_id}/candidates/").json()
    assert 1 <= len(candidates) <= settings.RIS_CANDIDATES_KEPT
    assert [c["rank"] for c in candidates] == list(range(len(candidates)))
    scores = [c["score"] for c in candidates]
    assert scores == sorted(scores, reverse=True)
    from pycocotools import mask as mask_utils

    for candidate in candidates:
        rle = candidate["rle"]
        assert rle["size"] == [PHOTO_SIDE, PHOTO_SIDE]
        mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert int(mask.sum()) == candidate["area"] > 0
        ys, xs = np.nonzero(mask)
        assert candidate["bbox_xyxy"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]

    # A second expression on the same image finds the image work in the worker's cache.
    second = api_client.post(
        f"/api/images/{image['id']}/expressions/",
        {"text": "the flag", "pipeline": "global_local", "config": FAST_CONFIG},
        format="json",
    ).json()
    again = _wait_for_job(second["job"]["id"], worker)
    assert again.state == "succeeded", again.error
    assert "proposals" not in again.timings["engine"]["stages"]
    assert api_client.get(f"/api/projects/{project.pk}/images/").json()[0]["status"] == "needs_review"
