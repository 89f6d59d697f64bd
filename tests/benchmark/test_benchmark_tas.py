"""``manage.py benchmark --pipeline tas`` on the synthetic REFER set: every sentence scored, and the captioner
runs once per mask per image (plus one image caption), never once per expression or per ref.

Tiny random models (wiring only): ``captioner_tiny``, ``clip_tiny`` and the random ``sam_tiny`` with its
filters off, which proposes masks fast. The peer code's count is computed from the same split: it captions
every mask once per ref (``sum over refs of the masks of the ref's image``).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command

from workers.engine.store.manifest import ModelStore
from workers.engine.store.tiny.writers import write_tiny

CAPTIONER = "captioner_tiny"
CONFIG = [
    'tas.proposal_source="sam_tiny"',
    'tas.amg={"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}',
    "tas.min_area=0",
    "tas.max_overlap=null",
    "tas.caption.num_beams=1",
    "tas.caption.max_new_tokens=3",
]


@pytest.fixture(scope="module")
def tas_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tas-models")
    store = ModelStore(root)
    for name in (CAPTIONER, "clip_tiny", "sam_tiny"):
        write_tiny(store, name)
    return root


def caption_calls_by_image(rows: list[dict]) -> dict[int, dict]:
    """Per image: captioner calls (summed sentence shares), sentences and refs."""
    out: dict[int, dict] = defaultdict(lambda: {"calls": 0.0, "sentences": 0, "refs": set()})
    for row in rows:
        image = out[row["image_id"]]
        image["calls"] += row["model_calls"].get(CAPTIONER, 0.0)
        image["sentences"] += 1
        image["refs"].add(row["ref_id"])
    return out


def masks_by_image(engine, root: Path, image_ids: list[int], overrides: dict) -> dict[int, int]:
    """The number of TAS proposals of each image, read back from the engine's cache (no model runs)."""
    from PIL import Image

    from workers.engine.core.types import ImageInput

    pipeline = engine.pipeline("tas", overrides)
    counts = {}
    for image_id in image_ids:
        path = root / "images" / "train2014" / f"COCO_train2014_{image_id:012d}.jpg"
        data = path.read_bytes()
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
        image = ImageInput(rgb=rgb, sha256=hashlib.sha256(data).hexdigest())
        counts[image_id] = len(pipeline.proposals(engine.context(image)))
    return counts


@pytest.mark.django_db
def test_benchmark_tas_captions_once_per_mask_per_image(
    synthetic_root: Path,
    tas_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    engine_settings,
) -> None:
    from server.benchmarks.models import BenchmarkRun
    from workers.cli.management.commands import benchmark as command
    from workers.engine.data.benchmark.report import parse_config_overrides

    engines = []
    build = command.build_engine

    def keep_engine(device: str | None):
        engines.append(build(device))
        return engines[-1]

    monkeypatch.setattr(command, "build_engine", keep_engine)
    engine_settings(model_dir=tas_model_dir, cache_dir=tmp_path / "cache", profile="tiny", device="cpu")
    out = tmp_path / "run"
    args = ["--dataset", "refcoco", "--split", "val", "--pipeline", "tas", "--data-root", str(synthetic_root)]
    args += ["--device", "cpu", "--out", str(out), "--no-progress"]
    for item in CONFIG:
        args += ["--config", item]
    call_command("benchmark", *args)

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    assert rows and {r["pipeline"] for r in rows} == {"tas"}
    assert all(r["n_candidates"] > 0 and 0.0 <= r["iou"] <= 1.0 for r in rows)
    images = caption_calls_by_image(rows)
    assert max(i["sentences"] for i in images.values()) >= 2  # several expressions on one image
    (engine,) = engines
    sam_calls = engine.meter.calls("sam_tiny")
    masks = masks_by_image(
        engine, synthetic_root, sorted(images), parse_config_overrides(CONFIG, ["tas"])["tas"]
    )
    assert engine.meter.calls("sam_tiny") == sam_calls == len(images)  # the proposals came from the cache
    for image_id, image in images.items():
        image["masks"] = masks[image_id]
        assert image["masks"] > 1
        assert image["calls"] == pytest.approx(image["masks"] + 1)  # each mask once, plus the image caption

    ours = sum(i["calls"] for i in images.values())
    peer = sum(i["masks"] * len(i["refs"]) for i in images.values())  # the code: every mask, once per ref
    assert ours == pytest.approx(sum(i["masks"] + 1 for i in images.values()))
    if any(len(i["refs"]) > 1 and i["masks"] > 1 for i in images.values()):
        assert ours < peer

    summary = json.loads((out / "summary.json").read_text())["pipelines"]["tas"]
    assert summary["model_calls_per_sentence"][CAPTIONER] == pytest.approx(ours / len(rows))
    assert summary["model_calls_per_sentence"]["sam_tiny"] == pytest.approx(len(images) / len(rows))
    run = BenchmarkRun.objects.get()
    assert run.state == BenchmarkRun.State.SUCCEEDED
