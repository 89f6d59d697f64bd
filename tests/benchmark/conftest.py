"""Fixtures of the benchmark tests: a synthetic REFER dataset, the colour-oracle pipeline and engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmark.oracle import ColourOracleEngine
from workers.engine.data.synthetic import write_synthetic_refcoco


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_refer")
    write_synthetic_refcoco(root, 3, seed=0)
    return root


PLUGIN_CATALOGUE = Path(__file__).resolve().parents[1] / "plugins" / "colour_oracle" / "catalogue.json"


@pytest.fixture(autouse=True)
def oracle_pipelines(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The colour oracle's catalogue entries ("oracle", "oracle_b") next to the built-in pipelines."""
    monkeypatch.setenv("RIS_PIPELINE_CATALOGUES", str(PLUGIN_CATALOGUE))
    return PLUGIN_CATALOGUE


@pytest.fixture
def oracle_engine() -> ColourOracleEngine:
    return ColourOracleEngine()
