"""The per-image feature cache: memory LRU under a byte cap, disk level with atomic writes, keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.engine.blocks.masks import Proposals
from workers.engine.core.cache import CacheKey, FeatureCache, tree_nbytes
from workers.engine.core.config import config_hash
from workers.engine.core.meter import Meter

SHA = "ab" * 32
OTHER_SHA = "cd" * 32


def key(kind: str = "clip_visual", params: dict | None = None, sha: str = SHA) -> CacheKey:
    return CacheKey.of(sha, kind, params or {"model": "clip_tiny"})


def test_config_hash_ignores_key_order_and_sees_values() -> None:
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({})) == 16


def test_keys_are_validated() -> None:
    with pytest.raises(ValueError, match="64"):
        CacheKey("abc", "kind", "0" * 16)
    with pytest.raises(ValueError, match="identifier"):
        CacheKey(SHA, "../escape", "0" * 16)
    assert key().relpath() == Path("ab") / SHA / f"clip_visual-{key().params_hash}.pt"


def test_memory_round_trip_and_miss() -> None:
    cache = FeatureCache(memory_bytes=1 << 20)
    value = {"global": torch.ones(3, 4)}
    assert cache.get(key()) is None
    cache.put(key(), value)
    assert cache.get(key()) is value
    assert cache.get(key(params={"model": "other"})) is None
    assert cache.get(key(sha=OTHER_SHA)) is None
    assert (cache.hits, cache.misses) == (1, 3)


def test_lru_evicts_least_recently_used_under_the_byte_cap() -> None:
    one_kb = torch.zeros(256)  # 1024 bytes
    cache = FeatureCache(memory_bytes=3 * 1024)
    keys = [key(params={"i": i}) for i in range(4)]
    for k in keys[:3]:
        cache.put(k, one_kb.clone())
    cache.get(keys[0])  # keys[1] is now the least recently used
    cache.put(keys[3], one_kb.clone())
    assert cache.memory_used <= 3 * 1024
    assert cache.get(keys[1]) is None
    assert all(cache.get(k) is not None for k in (keys[0], keys[2], keys[3]))


def test_a_value_larger_than_the_cap_is_not_kept_in_memory() -> None:
    cache = FeatureCache(memory_bytes=100)
    cache.put(key(), torch.zeros(1000))
    assert len(cache) == 0 and cache.get(key()) is None


def test_disk_level_survives_a_new_process_and_restores_types(tmp_path: Path) -> None:
    value = {
        "features": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "array": np.arange(4, dtype=np.int64),
        "size": (3, 4),
        "names": ["a", "b"],
        "missing": None,
        "nested": {"x": 1.5, "flag": True},
    }
    FeatureCache(memory_bytes=1 << 20, cache_dir=tmp_path).put(key(), value)
    fresh = FeatureCache(memory_bytes=1 << 20, cache_dir=tmp_path)
    loaded = fresh.get(key())
    assert fresh.disk_hits == 1
    torch.testing.assert_close(loaded["features"], value["features"])
    assert isinstance(loaded["array"], np.ndarray) and loaded["array"].tolist() == [0, 1, 2, 3]
    assert loaded["size"] == (3, 4) and isinstance(loaded["size"], tuple)
    assert loaded["names"] == ["a", "b"] and loaded["missing"] is None
    assert loaded["nested"] == {"x": 1.5, "flag": True}
    assert fresh.get(key()) is loaded  # promoted to memory
    assert fresh.hits == 1


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path) -> None:
    cache = FeatureCache(memory_bytes=0, cache_dir=tmp_path)
    for i in range(3):
        cache.put(key(params={"i": i}), {"v": torch.full((10,), float(i))})
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 3 and all(name.endswith(".pt") and not name.startswith(".") for name in files)
    assert cache.get(key(params={"i": 2}))["v"][0].item() == 2.0


def test_a_corrupt_disk_file_is_a_miss_not_a_crash(tmp_path: Path) -> None:
    cache = FeatureCache(memory_bytes=0, cache_dir=tmp_path)
    path = tmp_path / key().relpath()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file")
    assert cache.get(key()) is None
    calls = []
    value = cache.get_or_compute(key(), lambda: calls.append(1) or {"v": torch.ones(1)})
    assert calls == [1] and value["v"].item() == 1.0
    assert FeatureCache(memory_bytes=0, cache_dir=tmp_path).get(key())["v"].item() == 1.0


def test_get_or_compute_computes_once() -> None:
    cache = FeatureCache(memory_bytes=1 << 20)
    meter = Meter()

    def compute() -> dict:
        meter.count("encoder")
        return {"v": torch.ones(2)}

    for _ in range(3):
        cache.get_or_compute(key(), compute)
    assert meter.calls("encoder") == 1


def test_only_tensor_trees_are_cached(tmp_path: Path) -> None:
    cache = FeatureCache(memory_bytes=1 << 20, cache_dir=tmp_path)
    with pytest.raises(TypeError, match="tensor trees"):
        cache.put(key(), {"bad": object()})
    with pytest.raises(TypeError, match="non-string key"):
        cache.put(key(), {1: torch.ones(1)})


def test_proposals_state_round_trips_through_disk(tmp_path: Path) -> None:
    masks = np.zeros((2, 8, 10), dtype=bool)
    masks[0, 1:4, 2:6] = True
    masks[1, 5:8, 0:10] = True
    proposals = Proposals.from_masks(masks, predicted_iou=[0.9, 0.8])
    FeatureCache(memory_bytes=0, cache_dir=tmp_path).put(key("proposals"), proposals.to_state())
    state = FeatureCache(memory_bytes=0, cache_dir=tmp_path).get(key("proposals"))
    again = Proposals.from_state(state)
    assert again.rles == proposals.rles
    np.testing.assert_array_equal(again.to_numpy(), masks)
    np.testing.assert_allclose(again.predicted_iou, [0.9, 0.8])
    assert np.isnan(again.stability_score).all()


def test_tree_nbytes_counts_tensors_and_arrays() -> None:
    assert tree_nbytes({"a": torch.zeros(10), "b": np.zeros(5, dtype=np.float64)}) >= 40 + 40


def test_meter_stage_counts_and_capture() -> None:
    meter = Meter()
    with meter.capture() as private, meter.stage("proposals"):
        meter.count("sam", 2)
    with meter.stage("proposals"):
        pass
    snapshot = meter.snapshot()
    assert snapshot["stages"]["proposals"]["calls"] == 2
    assert snapshot["models"]["sam"]["calls"] == 2
    assert private.snapshot()["stages"]["proposals"]["calls"] == 1
    meter.reset()
    assert meter.snapshot() == {"stages": {}, "models": {}}
