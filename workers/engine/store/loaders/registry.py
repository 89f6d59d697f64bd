"""Which loader builds which on-disk format, and ``load_model``: verify, then build on a device.

``LOADERS`` maps a manifest ``format`` to ``loader(store, entry, device) -> object``:

- ``sam_checkpoint`` -> a ``Sam`` module (``workers.engine.store.loaders.sam``);
- ``open_clip_checkpoint`` -> a ``ClipBundle`` (``.clip``);
- ``transformers_folder`` -> a ``CaptionerBundle`` or ``MllmBundle`` (``.transformers``);
- ``diffusers_folder`` -> a ``DiffusionBundle`` (``.diffusers``);
- ``python_package`` -> the loaded package (``.package``: ``spacy.load`` for the text family).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from workers.engine.core.device import resolve_device
from workers.engine.core.errors import ModelStoreError
from workers.engine.store.loaders.clip import load_open_clip
from workers.engine.store.loaders.diffusers import load_diffusers_folder
from workers.engine.store.loaders.package import load_python_package
from workers.engine.store.loaders.sam import load_sam
from workers.engine.store.loaders.transformers import load_transformers_folder

if TYPE_CHECKING:
    from workers.engine.store.manifest import ModelEntry, ModelStore

Loader = Callable[["ModelStore", "ModelEntry", torch.device], Any]

LOADERS: dict[str, Loader] = {
    "sam_checkpoint": load_sam,
    "open_clip_checkpoint": load_open_clip,
    "transformers_folder": load_transformers_folder,
    "diffusers_folder": load_diffusers_folder,
    "python_package": load_python_package,
}


def load_model(store: ModelStore, name: str, device: str | torch.device = "cpu") -> Any:
    """Verify ``name``'s checksums, then build it with its format's loader on ``device``.

    Raises:
        ModelStoreError: a missing or damaged file (named, with the command that gets it), or a format
            no loader reads.
    """
    entry = store.verify(name)
    loader = LOADERS.get(entry.format)
    if loader is None:
        raise ModelStoreError(f"no loader is registered for format {entry.format!r} (model {name!r})")
    return loader(store, entry, resolve_device(device))
