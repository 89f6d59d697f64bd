"""The benchmark: REFER sentences grouped by image through the engine, scored, reported.

- ``spec``: what a run evaluates and its output folder (``run.json``, ``results.jsonl``).
- ``runner``: the loop, one ``Engine.predict`` call per image and pipeline.
- ``results``: per-sentence records and the JSON-lines file, written whole lines only.
- ``report``: metrics per pipeline, ``summary.md``, ``summary.json``, ``figure.png``.

Pure Python/NumPy (plus matplotlib for the figure): the Django side (``manage.py benchmark``, the Celery
shard task, the pages) stores what these return.
"""
