"""Fixtures of the benchmark tests: a synthetic REFER dataset, the colour-oracle pipeline and engine."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

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


@pytest.fixture
def use_oracle(monkeypatch: pytest.MonkeyPatch) -> list[ColourOracleEngine]:
    """``manage.py benchmark`` builds colour-oracle engines (listed here, newest last) instead of the real one."""
    built: list[ColourOracleEngine] = []

    def build(device: str | None) -> ColourOracleEngine:
        built.append(ColourOracleEngine())
        return built[-1]

    monkeypatch.setattr("workers.cli.management.commands.benchmark.build_engine", build)
    return built


def run_benchmark(root: Path, out: Path, *extra: str) -> str:
    """``manage.py benchmark`` on RefCOCO val of ``root`` with the ``oracle`` pipeline into ``out``; its stdout."""
    stdout = StringIO()
    call_command(
        "benchmark",
        "--dataset",
        "refcoco",
        "--split",
        "val",
        "--pipeline",
        "oracle",
        "--data-root",
        str(root),
        "--out",
        str(out),
        "--no-progress",
        *extra,
        stdout=stdout,
    )
    return stdout.getvalue()
