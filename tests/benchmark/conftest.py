"""Fixtures of the benchmark tests: a synthetic REFER dataset and a deterministic colour-oracle engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmark.oracle import ColourOracleEngine
from workers.engine.synthetic_refer import write_synthetic_refcoco


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_refer")
    write_synthetic_refcoco(root, 3, seed=0)
    return root


@pytest.fixture
def oracle_engine() -> ColourOracleEngine:
    return ColourOracleEngine()
