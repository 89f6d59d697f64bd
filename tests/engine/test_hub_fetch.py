"""Model fetch through a real HTTP model hub on 127.0.0.1 (``tests/engine/fake_hub.py``), offline.

``huggingface_hub`` itself does the downloading (``HF_ENDPOINT`` points it at the local hub), so these
tests prove what a person on a connected machine gets: the first-use fetch of ``make run`` (``models
ensure``) with progress, a download cut mid-file and resumed by HTTP Range (the client writes in 10 MB
chunks, so the big file is 12 MB and the cut falls after the first chunk), a wrong checksum refused naming
the file, a missing file named, a gated model's token message, and the one-line notice without a hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.fake_hub import FakeHub, FakeRepo, HubServer
from workers.engine.core.errors import ModelStoreError
from workers.engine.core.settings import PROJECT_ROOT, EngineSettings
from workers.engine.store.fetch import GatedModelError, HubUnreachableError, fetch, partial_folder
from workers.engine.store.manifest import ModelStore
from workers.engine.store.profiles import pipeline_profile, profile_notice

MB = 1 << 20
CLIP_REPO = "timm/vit_base_patch16_clip_224.openai"
BIG = "open_clip_model.safetensors"
CHUNK = 10 * MB  # huggingface_hub's DOWNLOAD_CHUNK_SIZE


def _bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _json(data: dict) -> bytes:
    return json.dumps(data).encode()


def cpu_set_repos() -> dict[str, FakeRepo]:
    """The hub repositories of the cpu profile, small files in their real layout (plus files the catalogue's
    patterns must leave out)."""
    return {
        CLIP_REPO: FakeRepo(
            {"open_clip_config.json": _json({"model_cfg": {"embed_dim": 512}}), BIG: _bytes(12 * MB, 1)}
        ),
        "Salesforce/blip-image-captioning-base": FakeRepo(
            {
                "config.json": _json({"model_type": "blip"}),
                "preprocessor_config.json": _json({"image_processor_type": "BlipImageProcessor"}),
                "tokenizer_config.json": _json({}),
                "vocab.txt": b"[PAD]\n[UNK]\n",
                "model.safetensors": _bytes(4096, 2),
                "pytorch_model.bin": _bytes(4096, 3),
            }
        ),
        "HuggingFaceTB/SmolVLM-256M-Instruct": FakeRepo(
            {
                "config.json": _json({"model_type": "idefics3"}),
                "processor_config.json": _json({}),
                "chat_template.jinja": b"{{ messages }}",
                "model.safetensors": _bytes(4096, 4),
                "onnx/model.onnx": _bytes(2048, 5),
            }
        ),
        "stable-diffusion-v1-5/stable-diffusion-v1-5": FakeRepo(
            {
                "model_index.json": _json({"_class_name": "StableDiffusionPipeline"}),
                "scheduler/scheduler_config.json": _json({}),
                "tokenizer/vocab.json": _json({}),
                "feature_extractor/preprocessor_config.json": _json({}),
                "text_encoder/config.json": _json({}),
                "text_encoder/model.safetensors": _bytes(2048, 6),
                "unet/config.json": _json({}),
                "unet/diffusion_pytorch_model.safetensors": _bytes(4096, 7),
                "unet/diffusion_pytorch_model.fp16.safetensors": _bytes(2048, 8),
                "vae/config.json": _json({}),
                "vae/diffusion_pytorch_model.safetensors": _bytes(2048, 9),
                "safety_checker/model.safetensors": _bytes(2048, 10),
            }
        ),
    }


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with HubServer(FakeHub(repos=cpu_set_repos())) as served:
        monkeypatch.setenv("HF_ENDPOINT", served.url)
        yield served


def _gets(hub: FakeHub, path_end: str) -> list[str | None]:
    """The Range headers of every GET of a file ending in ``path_end``."""
    return [rng for method, path, rng, _ in hub.requests if method == "GET" and path.endswith(path_end)]


def test_interrupted_download_resumes_by_range_and_is_checked(hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    hub.cuts[BIG] = [11 * MB]  # the connection drops once, 1 MB into the second 10 MB chunk
    lines: list[str] = []
    entry = fetch(store, "clip_vit_b_16", log=lines.append)
    expected = hashlib.sha256(hub.repos[CLIP_REPO].files[BIG]).hexdigest()
    assert entry.files[BIG] == expected
    assert hashlib.sha256(store.file("clip_vit_b_16", BIG).read_bytes()).hexdigest() == expected
    assert _gets(hub, BIG) == [None, f"bytes={CHUNK}-"]  # resumed after the first whole chunk
    assert entry.source["revision"] == hub.repos[CLIP_REPO].sha and entry.source["endpoint"] == hub.url
    assert entry.source["licence"].startswith("MIT")
    assert "downloading 2 file(s), 12.6 MB" in lines[0] and CLIP_REPO in lines[0]
    assert not partial_folder(store, "clip_vit_b_16").exists()
    assert store.status("clip_vit_b_16") == "present"


def test_a_fetch_cut_short_resumes_on_the_next_fetch(hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    hub.cuts[BIG] = [11 * MB] * 7  # more cuts than the client retries: this fetch gives up
    with pytest.raises(HubUnreachableError, match="clip_vit_b_16"):
        fetch(store, "clip_vit_b_16")
    assert not store.has("clip_vit_b_16")
    assert partial_folder(store, "clip_vit_b_16").is_dir()  # the partial download is kept
    hub.cuts[BIG] = []
    first_get = len(_gets(hub, BIG))
    entry = fetch(store, "clip_vit_b_16")
    assert _gets(hub, BIG)[first_get:] == [f"bytes={CHUNK}-"]  # continues, never from byte 0
    assert entry.files[BIG] == hashlib.sha256(hub.repos[CLIP_REPO].files[BIG]).hexdigest()


def test_wrong_checksum_is_refused_naming_the_file(hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    hub.corrupt.add("model.safetensors")
    with pytest.raises(ModelStoreError, match=r"model\.safetensors of model 'blip_base'.*fails its checksum"):
        fetch(store, "blip_base")
    assert not store.has("blip_base")
    assert not (partial_folder(store, "blip_base") / "model.safetensors").exists()  # refetched next time
    hub.corrupt.clear()
    assert fetch(store, "blip_base").files["model.safetensors"]


def test_a_small_file_is_checked_by_its_git_blob_id(hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    hub.corrupt.add("open_clip_config.json")
    with pytest.raises(ModelStoreError, match=r"open_clip_config\.json of model 'clip_vit_b_16'.*git blob"):
        fetch(store, "clip_vit_b_16")


def test_a_missing_file_is_named(hub: FakeHub, tmp_path: Path) -> None:
    del hub.repos[CLIP_REPO].files["open_clip_config.json"]
    with pytest.raises(
        ModelStoreError, match=r"has no file open_clip_config\.json, needed by model 'clip_vit_b_16'"
    ):
        fetch(ModelStore(tmp_path / "store"), "clip_vit_b_16")


def test_a_missing_repository_is_named(hub: FakeHub, tmp_path: Path) -> None:
    del hub.repos[CLIP_REPO]
    with pytest.raises(ModelStoreError, match=f"no repository {CLIP_REPO}"):
        fetch(ModelStore(tmp_path / "store"), "clip_vit_b_16")


def test_patterns_leave_out_what_the_catalogue_excludes(hub: FakeHub, tmp_path: Path) -> None:
    entry = fetch(ModelStore(tmp_path / "store"), "sd_1_5")
    assert "unet/diffusion_pytorch_model.safetensors" in entry.files
    assert not {"safety_checker/model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors"} & set(
        entry.files
    )


def test_gated_model_says_how_to_give_a_token_and_never_stores_it(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "hf_secretTOKEN123"
    hub.repos[CLIP_REPO].token = secret
    store = ModelStore(tmp_path / "store")
    with pytest.raises(GatedModelError) as refused:
        fetch(store, "clip_vit_b_16")
    assert "HF_TOKEN=" in str(refused.value) and "gated" in str(refused.value)
    monkeypatch.setenv("HF_TOKEN", secret)
    caplog.set_level("DEBUG")
    fetch(store, "clip_vit_b_16")
    assert any(auth == f"Bearer {secret}" for *_, auth in hub.requests)
    stored = "".join(p.read_text(errors="replace") for p in store.root.rglob("*.json"))
    assert secret not in stored and secret not in caplog.text


def _manage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_first_use_of_make_run_fetches_the_cpu_set_with_progress(hub: FakeHub, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    env = {
        "RIS_MODEL_DIR": str(store_dir),
        "RIS_MODEL_PROFILE": "auto",
        "RIS_DEVICE": "cpu",
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "TQDM_POSITION": "-1",  # the hub client draws its bars on a terminal only; here stderr is a pipe
    }
    hub.cuts[BIG] = [11 * MB]
    done = _manage(["models", "ensure"], env)
    assert done.returncode == 0, done.stderr
    for name in ("clip_vit_b_16", "blip_base", "smolvlm_256m", "sd_1_5"):
        assert f"{name}: fetched" in done.stdout
    assert "profile auto -> cpu" in done.stdout
    assert "Notice" not in done.stdout  # every pipeline runs on the fetched models
    bars = done.stderr.replace("\r", "\n").splitlines()  # the hub client's progress bars, one per file
    assert any(line.startswith(f"{BIG}: 100%") and "12.6M/12.6M" in line for line in bars), done.stderr[
        -2000:
    ]
    assert any(line.startswith("model.safetensors: 100%") for line in bars)
    assert "HTTP Request" not in done.stderr
    assert f"bytes={CHUNK}-" in [rng for _, _, rng, _ in hub.requests]
    settings = EngineSettings(model_dir=store_dir, cache_dir=None, device="cpu")
    assert profile_notice(settings) is None
    assert {pipeline_profile(settings, p).profile for p in ("global_local", "tas", "refdiff", "lgd")} == {
        "cpu"
    }
    manifest = json.loads((store_dir / "manifest.json").read_text())
    assert manifest["models"]["sd_1_5"]["source"]["licence"] == "CreativeML OpenRAIL-M"

    again = _manage(["models", "ensure"], env)  # idempotent: nothing downloaded twice
    assert again.returncode == 0 and "0 fetched now" in again.stdout
    assert len(_gets(hub, BIG)) == 2


def test_without_a_hub_make_run_says_so_in_one_line(tmp_path: Path) -> None:
    with HubServer(FakeHub()) as gone:
        url = gone.url  # a port nothing listens on once the server is closed
    env = {
        "RIS_MODEL_DIR": str(tmp_path / "store"),
        "RIS_MODEL_PROFILE": "auto",
        "RIS_DEVICE": "cpu",
        "HF_ENDPOINT": url,
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    done = _manage(["models", "ensure"], env)
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stdout.splitlines() if line.startswith("Notice:")]
    assert len(notices) == 1 and "python manage.py models fetch --profile auto" in notices[0]
    assert "unreachable" in notices[0] and "Traceback" not in done.stderr
    settings = EngineSettings(model_dir=tmp_path / "store", cache_dir=None, device="cpu")
    assert pipeline_profile(settings, "global_local").profile == "tiny"
    strict = _manage(["models", "fetch", "--profile", "auto"], env)
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    assert "models fetch clip_vit_b_16 --from DIR" in strict.stderr


@pytest.mark.slow
def test_the_first_job_after_a_hub_fetch_ranks_with_the_fetched_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_store: ModelStore
) -> None:
    """The hub serves loadable open_clip files (the tiny CLIP's config and weights, as safetensors) under
    CLIP ViT-B/16's real repository and names; after ``fetch``, an ``auto`` engine on a CPU resolves
    Global-Local CLIP to the ``cpu`` profile and ranks through the fetched ``clip_vit_b_16``."""
    import torch
    from safetensors.torch import save_file

    from tests.engine.ranking_fixtures import TINY_SAM_AMG, image_input, random_rgb
    from workers.engine.runtime import Engine

    tiny = model_store.path("clip_tiny")
    state = torch.load(tiny / "open_clip_pytorch_model.bin", map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    repo = FakeRepo(
        {
            "open_clip_config.json": (tiny / "open_clip_config.json").read_bytes(),
            BIG: (tmp_path / "w.safetensors").read_bytes(),
        }
    )
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    store = ModelStore(tmp_path / "store")
    settings = EngineSettings(model_dir=store.root, cache_dir=None, device="cpu", profile="auto")
    fetch(store, "mobile_sam")
    assert pipeline_profile(settings, "global_local").profile == "tiny"  # before: the stand-ins
    with HubServer(FakeHub(repos={CLIP_REPO: repo})) as served:
        monkeypatch.setenv("HF_ENDPOINT", served.url)
        fetch(store, "clip_vit_b_16")
    assert pipeline_profile(settings, "global_local").profile == "cpu"
    notice = profile_notice(settings)
    assert notice is not None and "global_local" not in notice  # the other pipelines still lack models

    engine = Engine(settings)
    prediction = engine.predict(
        image_input(random_rgb()), ["the left thing"], pipeline="global_local", config={"amg": TINY_SAM_AMG}
    )
    assert prediction.profile == "cpu"
    assert prediction.config["clip_model"] == "clip_vit_b_16"
    assert prediction.config["proposal_source"] == "mobile_sam"
    assert engine.meter.calls("clip_vit_b_16:text") >= 1 and prediction.candidates[0]
