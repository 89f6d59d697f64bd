"""The Celery tasks of the workers, one module per kind of work, all living by one discipline.

- ``lifecycle``: the shared runner (claim, heartbeat thread while the body runs, finish or fail in words,
  database-unavailable retry with capped exponential backoff) and the one ``error_in_words``.
- ``engine_access``: the only door to ``workers.engine`` (``engine_get`` and the few names the tasks
  use); tests fake the engine there.
- ``segmentation``: ``run_segmentation_job`` and ``prepare_image``; ``refine``: ``refine_mask``;
  ``benchmark``: ``run_benchmark_shard``; ``reconcile``: ``reconcile_jobs`` for all three kinds.

Every task keeps the Celery name it had before this package existed (``workers.tasks.run_segmentation_job``,
``workers.web_tasks.refine_mask``, ``workers.benchmark_tasks.run_benchmark_shard``, ...), given explicitly
with ``name=``: the web process sends tasks by name (``server.ris.services.dispatch``), and messages queued
before an upgrade must still find their task after it. Importing this package or its modules never
imports torch: the engine is reached inside the task bodies only.
"""
