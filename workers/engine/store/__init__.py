"""The model store: named models on disk with a manifest of sha256 checksums, and how to get and load them.

- ``catalogue``: every model the project knows (and which stand-in replaces it in each profile).
- ``manifest``: what this machine has (``ModelStore``), verified by sha256.
- ``fetch``: getting a model into the store (an installed package, a model hub, a local folder).
- ``loaders/``: one module per on-disk format, each through the real library loader.
- ``tiny/``: random-weight stand-ins written in the real formats (wiring tests, never quality).

Pipelines never load models themselves: ``workers.engine.hub.ModelHub`` does, and keeps them loaded.
"""
