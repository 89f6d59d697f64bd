"""The deployment files parse and say what the README promises (no Docker engine on CI machines)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _dockerfile(name: str) -> list[tuple[str, str]]:
    """Instructions of a Dockerfile as (KEYWORD, rest), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DOCKER / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_compose_has_every_service_with_health_checks(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "web", "gpu-worker", "flower", "beat"} <= set(services)
    for name in ("postgres", "redis", "web", "gpu-worker", "flower"):
        assert "healthcheck" in services[name], f"{name} has no health check"
        assert services[name]["healthcheck"]["test"], name


def test_compose_volumes_for_media_and_model_store(compose: dict) -> None:
    worker = compose["services"]["gpu-worker"]
    mounts = {m.split(":")[1] for m in worker["volumes"]}
    assert "/models" in mounts and "/var/lib/ris/media" in mounts
    assert worker["environment"]["RIS_MODEL_DIR"] == "/models"
    assert "media:/var/lib/ris/media" in compose["services"]["web"]["volumes"]
    assert {"pgdata", "media", "models"} <= set(compose["volumes"])


def test_gpu_worker_reserves_one_gpu_and_waits_for_services(compose: dict) -> None:
    worker = compose["services"]["gpu-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_web_settings_come_from_the_environment(compose: dict) -> None:
    env = compose["services"]["web"]["environment"]
    assert env["RIS_ENV"] == "production"
    assert env["DATABASE_URL"].startswith("postgres://")
    assert env["CELERY_BROKER_URL"].startswith("redis://")
    assert "?" in env["DJANGO_SECRET_KEY"], (
        "the secret must be required from the environment, never defaulted"
    )


def test_web_image_runs_gunicorn_and_collects_static() -> None:
    steps = _dockerfile("web.Dockerfile")
    assert steps[0][0] == "FROM" and "python:3.11" in steps[0][1]
    runs = " ".join(rest for kw, rest in steps if kw == "RUN")
    assert "collectstatic" in runs
    cmd = next(rest for kw, rest in steps if kw == "CMD")
    assert "gunicorn server.config.wsgi:application" in cmd
    assert any(kw == "HEALTHCHECK" and "/healthz" in rest for kw, rest in steps)
    assert any(kw == "USER" and rest != "root" for kw, rest in steps)


def _installed_locks(name: str) -> list[str]:
    """The lock files a Dockerfile's RUN steps install with ``pip install -r``."""
    runs = " ".join(rest for kw, rest in _dockerfile(name) if kw == "RUN")
    return re.findall(r"pip install [^&;]*?-r (\S+)", runs)


def _lock_names(path: str) -> dict[str, str]:
    lines = (DOCKER.parent / path).read_text().splitlines()
    return {
        name.strip().lower().replace("_", "-"): version
        for name, _, version in (line.partition("==") for line in lines if line and not line.startswith("#"))
    }


def test_web_image_installs_only_the_web_lock_and_no_torch() -> None:
    steps = _dockerfile("web.Dockerfile")
    assert _installed_locks("web.Dockerfile") == ["requirements/web.lock"]
    runs = " ".join(rest for kw, rest in steps if kw == "RUN")
    assert "--no-deps" in runs and "pip check" in runs, "exactly the lock's pins, checked complete"
    assert not re.search(r"torch|nvidia|cuda|worker\.lock|dev\.lock|requirements\.lock", runs), runs
    web = _lock_names("requirements/web.lock")
    engine = {"torch", "torchvision", "triton", "transformers", "diffusers", "open-clip-torch", "spacy"}
    assert not engine & web.keys() and not [n for n in web if n.startswith(("nvidia-", "cuda-"))]
    assert {"django", "gunicorn", "celery", "flower", "whitenoise"} <= web.keys()


def test_gpu_worker_image_installs_the_worker_lock_on_a_matching_cuda_base() -> None:
    steps = _dockerfile("gpu-worker.Dockerfile")
    assert _installed_locks("gpu-worker.Dockerfile") == ["requirements/worker.lock"]
    worker = _lock_names("requirements/worker.lock")
    assert worker["torch"] == "2.14.1" and "nvidia-cudnn-cu13" in worker
    # PyPI's torch brings its CUDA libraries as wheels; the base image's CUDA must be the same major.minor.
    cuda = re.match(r"nvidia/cuda:(\d+\.\d+)\.", steps[0][1])
    assert cuda and worker["cuda-toolkit"].startswith(cuda.group(1) + "."), (
        steps[0][1],
        worker["cuda-toolkit"],
    )


def test_gpu_worker_image_is_cuda_based_and_never_forks() -> None:
    steps = _dockerfile("gpu-worker.Dockerfile")
    assert steps[0][0] == "FROM" and steps[0][1].startswith("nvidia/cuda:")
    cmd = next(rest for kw, rest in steps if kw == "CMD")
    # One process per GPU: the solo pool never forks after CUDA is initialised.
    assert '"--pool", "solo"' in cmd and '"--concurrency", "1"' in cmd and '"interactive,background"' in cmd
    env = " ".join(rest for kw, rest in steps if kw == "ENV")
    assert "RIS_MODEL_DIR=/models" in env and "RIS_DEVICE=cuda" in env


def test_readme_says_how_to_start_them_and_scale_workers() -> None:
    readme = (DOCKER.parent / "README.md").read_text()
    deploy = readme[readme.index("## Deploying with Docker and GPUs") :]
    assert "docker compose -f docker/compose.yaml up" in deploy and "--scale gpu-worker=" in deploy
    assert "DJANGO_SECRET_KEY" in deploy and "models fetch" in deploy
    scaling = deploy[deploy.index("### Scaling workers across machines") :]
    # No shared local disk: images through the storage API (a shared volume or S3), models per machine.
    assert "RIS_STORAGE=s3" in scaling and "RIS_MEDIA_ROOT" in scaling and "RIS_MODEL_DIR" in scaling
    assert "--pool solo" in scaling and "CUDA_VISIBLE_DEVICES" in scaling
