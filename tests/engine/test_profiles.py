"""The ``auto`` model profile: resolved by machine (GPU or not) and by what the store holds, torch-free."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.engine.core.errors import ConfigError
from workers.engine.core.settings import EngineSettings
from workers.engine.store import profiles
from workers.engine.store.catalogue import model_for_profile
from workers.engine.store.profiles import pipeline_profile, profile_models, refine_profile, target_profile


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    fake = tmp_path / "nvidia-version"
    monkeypatch.setattr(profiles, "NVIDIA_PROC", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def test_auto_is_the_paper_set_with_a_gpu_and_the_cpu_set_without(
    no_gpu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert target_profile("auto", "auto") == "cpu"
    assert target_profile("auto", "cuda") == "paper" and target_profile("auto", "cpu") == "cpu"
    no_gpu.write_text("NVRM version: 550")
    assert target_profile("auto", "auto") == "paper"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert target_profile("auto", "auto") == "cpu"
    assert target_profile("tiny", "cuda") == "tiny" and target_profile("paper", "cpu") == "paper"


def test_the_cpu_set_is_laptop_size_and_real() -> None:
    cpu_set = profile_models("cpu")
    assert cpu_set[0] == "mobile_sam" and len(cpu_set) == len(set(cpu_set))
    assert set(cpu_set) == {"mobile_sam", "clip_vit_b_16", "smolvlm_256m", "sd_1_5", "blip_base", "spacy_en"}
    assert {"sam_vit_h", "clip_vit_b_32", "blip2_opt_2_7b", "llava_1_5_7b"} <= set(profile_models("paper"))
    with pytest.raises(ConfigError, match="resolve it"):
        model_for_profile("clip_vit_b_32", "auto")


def test_explicit_profiles_never_fall_back(tmp_path: Path) -> None:
    settings = EngineSettings(model_dir=tmp_path, cache_dir=None, device="cpu", profile="paper")
    resolved = pipeline_profile(settings, "tas")
    assert (resolved.profile, resolved.fell_back, resolved.missing) == ("paper", False, ())
    auto = settings.replace(profile="auto")
    fallen = pipeline_profile(auto, "tas")
    assert fallen.profile == "tiny" and set(fallen.missing) == {"mobile_sam", "clip_vit_b_16", "blip_base"}
    assert refine_profile(auto) == "tiny"  # MobileSAM is not in this empty store either


def test_a_bad_profile_setting_is_one_line_not_a_traceback() -> None:
    import os
    import subprocess
    import sys

    from workers.engine.core.settings import PROJECT_ROOT

    done = subprocess.run(
        [sys.executable, "manage.py", "models", "list"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "RIS_MODEL_PROFILE": "huge"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "error: model profile 'huge' is not one of auto, paper, cpu, tiny"


def test_opt_in_pipelines_are_not_fetched_on_first_use_and_never_fall_back(tmp_path: Path) -> None:
    from workers.engine.store.profiles import first_use_pipelines

    assert "grounded_sam3" not in first_use_pipelines() and "global_local" in first_use_pipelines()
    assert "sam3" not in profile_models("cpu") and "qwen2_5_vl_3b" not in profile_models("cpu")
    auto = EngineSettings(model_dir=tmp_path, cache_dir=None, device="cpu", profile="auto")
    grounded = pipeline_profile(auto, "grounded_sam3")
    assert (grounded.profile, grounded.fell_back) == ("cpu", False)  # a missing model fails the job in words
    notice = profiles.profile_notice(auto) or ""
    assert "grounded_sam3" not in notice and "sam3" not in notice


def test_the_ensemble_follows_its_members_models_under_auto(tmp_path: Path) -> None:
    """Offline, the ensemble's members' cpu models are missing: it falls back to the stand-ins with them,
    never to the paper models (which a laptop cannot have)."""
    from workers.engine.methods.catalogue import pipeline_entry

    auto = EngineSettings(model_dir=tmp_path, cache_dir=None, device="cpu", profile="auto")
    resolved = pipeline_profile(auto, "ensemble")
    assert resolved.profile == "tiny" and "clip_vit_b_16" in resolved.missing
    assert len(resolved.missing) == len(set(resolved.missing))
    assert pipeline_entry("ensemble").resolve(None, "cpu").member_profile == "cpu"
    assert pipeline_entry("ensemble").resolve(None, "tiny").member_profile == "tiny"
