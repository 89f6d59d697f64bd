"""Production settings refuse to start unsafe, and no secret is written in the repository.

The settings checks import Django in a fresh interpreter with ``RIS_ENV=production`` (the way gunicorn and
the workers start), so nothing this test process has configured leaks in.

The secret scan reads every file git tracks or would track (not ignored) among Python, YAML, TOML, shell,
Dockerfiles and ``.env.example``, outside ``tests/``: no key, token or password literal except the
documented development default in settings (which production refuses) and the build-only key the web
image's collectstatic step uses.
"""

from __future__ import annotations

import ast
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SECRET_NAME = re.compile(
    r"(SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY|(AUTH|ACCESS|API|BEARER|REFRESH)_TOKEN|^TOKEN$)",
    re.IGNORECASE,
)  # not a tokenizer's special tokens (bos_token, pad_token)
KEY_SHAPES = {
    "AWS access key id": re.compile(r"AKIA[0-9A-Z]{16}"),
    "private key block": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
    "GitHub token": re.compile(r"gh[pousr]_[A-Za-z0-9]{36}"),
    "Slack token": re.compile(r"xox[abposr]-[A-Za-z0-9-]{10,}"),
    "password in a URL": re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@${}]+:(?!\$\{)[^/\s@]+@"),
}
# The documented development default (settings refuse it in production) and its name.
DEVELOPMENT_DEFAULTS = {("server/config/settings.py", "_INSECURE_KEY")}
# Fallbacks of secrets in compose that were reviewed, with why they are tolerated (see the report).
COMPOSE_DEFAULTS_REVIEWED: dict[str, str] = {}


def _settings_process(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "RIS_ENV"))}
    clean.update({"DJANGO_SETTINGS_MODULE": "server.config.settings", **env})
    code = "import django; django.setup(); from django.conf import settings; print('DEBUG', settings.DEBUG)"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DJANGO_DEBUG": "true", "DJANGO_SECRET_KEY": secrets.token_urlsafe(48)}, "DJANGO_DEBUG on"),
        ({}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": "insecure-development-key-change-me"}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": "short-secret"}, "at least 32 characters"),
    ],
    ids=["debug-on", "no-secret", "development-secret", "short-secret"],
)
def test_production_refuses_unsafe_settings(env: dict[str, str], message: str) -> None:
    result = _settings_process(RIS_ENV="production", **env)
    assert result.returncode != 0, result.stdout
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr, result.stderr[-2000:]


def test_production_starts_with_a_generated_secret() -> None:
    result = _settings_process(RIS_ENV="production", DJANGO_SECRET_KEY=secrets.token_urlsafe(48))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DEBUG False" in result.stdout


def test_secret_key_comes_from_the_environment() -> None:
    key = secrets.token_urlsafe(48)
    code = "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "server.config.settings", "DJANGO_SECRET_KEY": key}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.stdout.strip() == key, result.stderr[-2000:]


def _repository_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    wanted = re.compile(r"(\.(py|ya?ml|toml|sh|cfg|ini)$|Dockerfile|\.env\.example$)")
    return [ROOT / name for name in listed if wanted.search(name) and not name.startswith("tests/")]


def _python_literal_secrets(path: Path) -> list[str]:
    """``NAME = "literal"``, ``f(password="literal")`` and ``{"PASSWORD": "literal"}`` with a secret-like name."""
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    relative = str(path.relative_to(ROOT))

    def literal(node: ast.AST | None) -> bool:
        return isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) >= 4

    for node in ast.walk(tree):
        pairs: list[tuple[str, ast.AST | None]] = []
        if isinstance(node, ast.Assign):
            pairs = [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            pairs = [(node.target.id, node.value)]
        elif isinstance(node, ast.Call):
            pairs = [(k.arg, k.value) for k in node.keywords if k.arg]
        elif isinstance(node, ast.Dict):
            pairs = [(k.value, v) for k, v in zip(node.keys, node.values, strict=True) if literal(k)]
        for name, value in pairs:
            if SECRET_NAME.search(name) and literal(value) and (relative, name) not in DEVELOPMENT_DEFAULTS:
                found.append(f"{relative}:{node.lineno}: {name} = {value.value!r}")  # type: ignore[union-attr]
    return found


def test_no_secret_is_written_in_the_repository() -> None:
    files = _repository_files()
    assert any(path.name == "settings.py" for path in files) and any(p.suffix == ".yaml" for p in files)
    problems: list[str] = []
    for path in files:
        text = path.read_text(errors="replace")
        relative = path.relative_to(ROOT)
        for label, shape in KEY_SHAPES.items():
            problems += [f"{relative}: {label}: {m.group(0)[:40]}" for m in shape.finditer(text)]
        if path.suffix == ".py":
            problems += _python_literal_secrets(path)
    assert problems == [], "hard-coded secrets:\n" + "\n".join(problems)


def test_the_development_default_is_refused_in_production() -> None:
    from server.config import settings as project_settings

    assert project_settings._INSECURE_KEY in (ROOT / "server/config/settings.py").read_text()
    assert "refuses to start" in (ROOT / "README.md").read_text()  # documented


def test_compose_takes_secrets_from_the_environment() -> None:
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    checked = 0
    for service, spec in compose["services"].items():
        environment = spec.get("environment") or {}
        for name, value in environment.items():
            if not SECRET_NAME.search(name):
                continue
            checked += 1
            value = str(value)
            assert value.startswith("${"), f"{service}: {name} is written in compose: {value!r}"
            if ":-" in value:
                assert name in COMPOSE_DEFAULTS_REVIEWED, (
                    f"{service}: {name} falls back to a default: {value}"
                )
    assert checked >= 2
    web = compose["services"]["web"]["environment"]
    assert web["DJANGO_SECRET_KEY"].startswith("${DJANGO_SECRET_KEY:?"), "the Django secret must be required"


def test_web_image_keeps_its_build_secret_out_of_the_runtime_environment() -> None:
    dockerfile = (ROOT / "docker/web.Dockerfile").read_text()
    env_lines = re.findall(r"^ENV .*(?:\\\n.*)*", dockerfile, flags=re.MULTILINE)
    assert env_lines and not any("SECRET" in line for line in env_lines)
    build_only = re.search(r"RUN DJANGO_SECRET_KEY=(\S+) python manage.py collectstatic", dockerfile)
    assert build_only is not None and build_only.group(1).startswith("build-only")


def test_flower_needs_credentials() -> None:
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    flower = compose["services"]["flower"]
    command = " ".join(flower.get("command") or [])
    env = flower.get("environment") or {}
    assert "--basic-auth" in command or "FLOWER_BASIC_AUTH" in env or not flower.get("ports")
