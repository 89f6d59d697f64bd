"""ModelHub: loaded once, verified, LRU-evicted under a byte budget, thread-safe."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from workers.engine import hub as hub_module
from workers.engine.core.errors import ModelStoreError
from workers.engine.hub import ModelHub, model_nbytes
from workers.engine.store.loaders.clip import ClipBundle
from workers.engine.store.manifest import ModelStore

MB = 1024 * 1024


def test_get_loads_once_and_counts(model_store: ModelStore) -> None:
    hub = ModelHub(model_store, device="cpu", memory_budget_mb=1024)
    first = hub.get("sam_tiny")
    second = hub.get("sam_tiny")
    assert first is second
    assert hub.load_counts["sam_tiny"] == 1
    clip = hub.get("clip_tiny")
    assert isinstance(clip, ClipBundle)
    assert hub.loaded() == ["sam_tiny", "clip_tiny"]
    assert hub.loaded_bytes() == model_nbytes(first) + model_nbytes(clip)
    assert hub.stats()["loads"] == {"sam_tiny": 1, "clip_tiny": 1}
    assert next(first.parameters()).device.type == "cpu"


def test_auto_device_resolves() -> None:
    hub = ModelHub(ModelStore(Path("/nonexistent-store")), device="auto")
    assert hub.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_get_refuses_a_damaged_model(tmp_path: Path) -> None:
    hub = ModelHub(ModelStore(tmp_path), device="cpu")
    with pytest.raises(ModelStoreError, match="models make-tiny"):
        hub.get("sam_tiny")
    assert hub.loaded() == []


def test_model_nbytes_counts_bundles_once() -> None:
    linear = torch.nn.Linear(10, 10)  # 110 float32 parameters
    assert model_nbytes(linear) == 440
    holder = type("Holder", (), {})()
    holder.a = linear
    holder.b = linear  # shared: counted once
    holder.c = torch.nn.BatchNorm1d(4)  # 8 parameters + running stats 8 + counter (int64)
    assert model_nbytes(holder) == 440 + 8 * 4 + 8 * 4 + 8


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Replace the store loader with modules of known size (megabytes by name)."""
    sizes = {"a": 3, "b": 3, "c": 3, "big": 20}
    loads: dict[str, int] = {}

    def fake_load(store: object, name: str, device: torch.device) -> torch.nn.Module:
        loads[name] = loads.get(name, 0) + 1
        module = torch.nn.Module()
        module.register_buffer("weights", torch.zeros(sizes[name] * MB, dtype=torch.uint8))
        return module

    monkeypatch.setattr(hub_module, "load_model", fake_load)
    return loads


def test_least_recently_used_is_evicted_first(fake_models: dict[str, int]) -> None:
    hub = ModelHub(ModelStore(Path("/unused")), device="cpu", memory_budget_mb=7)
    hub.get("a")
    hub.get("b")
    hub.get("a")  # a is now the most recently used
    hub.get("c")  # 9 MB > 7 MB: b goes
    assert hub.loaded() == ["a", "c"]
    assert hub.loaded_bytes() == 6 * MB
    hub.get("b")  # reloaded; a is now the oldest and goes
    assert hub.loaded() == ["c", "b"]
    assert fake_models == {"a": 1, "b": 2, "c": 1}
    assert hub.load_counts["b"] == 2


def test_a_model_larger_than_the_budget_still_loads_alone(fake_models: dict[str, int]) -> None:
    hub = ModelHub(ModelStore(Path("/unused")), device="cpu", memory_budget_mb=7)
    hub.get("a")
    big = hub.get("big")
    assert hub.loaded() == ["big"] and hub.get("big") is big
    assert hub.evict("big") and hub.loaded() == []


def test_concurrent_gets_load_once(fake_models: dict[str, int]) -> None:
    hub = ModelHub(ModelStore(Path("/unused")), device="cpu", memory_budget_mb=100)
    results: list[object] = []
    barrier = threading.Barrier(6)

    def worker() -> None:
        barrier.wait()
        results.append(hub.get("a"))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6 and all(r is results[0] for r in results)
    assert fake_models == {"a": 1}


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="memory_budget_mb"):
        ModelHub(ModelStore(Path("/unused")), device="cpu", memory_budget_mb=0)


# -- wrappers belong to the hub and go with their model --------------------------------------------------


def test_wrappers_are_built_once_per_key_and_dropped_with_their_model(fake_models: dict[str, int]) -> None:
    hub = ModelHub(ModelStore(Path("/unused")), device="cpu", memory_budget_mb=7)
    builds: list[str] = []

    def build(model: torch.nn.Module) -> dict:
        builds.append("built")
        return {"on": model}

    first = hub.wrapper("a", "extractor", build, key={"side": 224})
    assert hub.wrapper("a", "extractor", build, key={"side": 224}) is first
    other = hub.wrapper("a", "extractor", build, key={"side": 336})
    assert other is not first and len(builds) == 2 and len(hub.wrappers("a")) == 2
    hub.get("b")
    hub.get("c")  # 9 MB > 7 MB: "a" is evicted, and its wrappers with it
    assert hub.loaded() == ["b", "c"] and hub.wrappers("a") == []
    again = hub.wrapper("a", "extractor", build, key={"side": 224})  # reloads "a", builds a new wrapper
    assert again is not first and again["on"] is hub.get("a") and len(builds) == 3


def test_evicting_a_model_frees_its_memory(model_store: ModelStore) -> None:
    """Nothing the engine keeps (pipelines, wrappers) holds an evicted model: its tensors are freed."""
    import gc
    import weakref

    from workers.engine.blocks.clip.config import ClipFeatureConfig
    from workers.engine.blocks.clip.features import clip_extractor
    from workers.engine.core.settings import EngineSettings
    from workers.engine.runtime import Engine

    settings = EngineSettings(model_dir=model_store.root, cache_dir=None, device="cpu", profile="tiny")
    engine = Engine(settings, hub=ModelHub(model_store, device="cpu", memory_budget_mb=1))
    pipeline = engine.pipeline("global_local", {"clip_model": "clip_tiny", "proposal_source": "sam_tiny"})
    extractor = clip_extractor(engine.hub, "clip_tiny", ClipFeatureConfig())
    model_ref = weakref.ref(extractor.model)
    weight_ref = weakref.ref(next(extractor.model.parameters()))
    extractor_ref = weakref.ref(extractor)
    del extractor
    engine.hub.get("sam_tiny")  # over the 1 MB budget: clip_tiny, the least recently used, is evicted
    gc.collect()
    assert not engine.hub.is_loaded("clip_tiny") and pipeline is engine.pipeline(
        "global_local", {"clip_model": "clip_tiny", "proposal_source": "sam_tiny"}
    )
    assert extractor_ref() is None and model_ref() is None and weight_ref() is None
