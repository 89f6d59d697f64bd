"""The engine: pure PyTorch, no Django, no Celery. Images and referring expressions in, ranked masks out.

Rooms (each package's docstring says its job):

- ``runtime``: the facade a worker or the benchmark calls (``Engine.prepare / predict / refine``).
- ``hub``: loads models from the store and owns every wrapper built on them; both are dropped together.
- ``core/``: what everything else stands on: types, errors, settings, meter, device, the per-image cache
  with ``ImageContext``, the config base.
- ``store/``: the model store: catalogue (every model and its stand-ins), manifest, fetch, loaders, tiny models.
- ``blocks/``: building blocks shared by methods: masks and ``Proposals``, automatic mask generation and
  prompt refine, CLIP (one tower adapter), captions, expression parsing, geometry, ranking.
- ``methods/``: one package per paper (``global_local``, ``tas``, ``refdiff``, ``lgd``), found through the
  torch-free pipeline catalogue.
- ``data/``: the REFER reader and writer, the synthetic set, metrics, the benchmark runner and report.

Package ``__init__`` modules import nothing, so a torch-free module (settings, configs, catalogues) can be
imported by the web process without pulling torch in.
"""
