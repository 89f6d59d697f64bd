"""The benchmark: REFER sentences grouped by image through the engine, scored, reported.

- :mod:`.spec`: what a run evaluates and its output folder (``run.json``, ``results.jsonl``).
- :mod:`.runner`: the loop, one ``Engine.predict`` call per image and pipeline.
- :mod:`.results`: per-sentence records and the JSON-lines file, written whole lines only.
- :mod:`.report`: metrics per pipeline, ``summary.md``, ``summary.json``, ``figure.png``.

Pure Python/NumPy (plus matplotlib for the figure): the Django side (``manage.py benchmark``, the Celery
shard task, the pages) stores what these return.
"""

from workers.engine.benchmark.report import parse_config_overrides, summarize_results, write_report
from workers.engine.benchmark.results import ResultsFile, ResultsFileError, SentenceResult
from workers.engine.benchmark.runner import EngineLike, MissingImage, RunOutcome, run_groups
from workers.engine.benchmark.spec import BenchmarkSpec, RunFolder, RunFolderError

__all__ = [
    "BenchmarkSpec",
    "EngineLike",
    "MissingImage",
    "ResultsFile",
    "ResultsFileError",
    "RunFolder",
    "RunFolderError",
    "RunOutcome",
    "SentenceResult",
    "parse_config_overrides",
    "run_groups",
    "summarize_results",
    "write_report",
]
