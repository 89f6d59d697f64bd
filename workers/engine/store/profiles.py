"""Which models a pipeline runs on here: the ``auto`` profile resolved by machine and model store.

``auto`` (the default of ``RIS_MODEL_PROFILE``) stands for ``paper`` on a machine with a GPU and ``cpu``
without one (the catalogue's ``resolves_to``). A pipeline whose models of that set are all in the store runs
on them; one that lacks any runs wholly on the ``tiny`` stand-ins (the ``fallback``: never a mix of real and
random models in one ranking) and :func:`profile_notice` says so in one line, with the command that fixes it.
``paper``, ``cpu`` and ``tiny`` are taken as they are (a missing model is then an error naming its command).

Torch-free: the web process calls it to show the notice and to check a job's config at the door. "Has a
GPU" is read without torch: ``RIS_DEVICE`` (``cuda``/``cpu``), else the NVIDIA driver's ``/proc`` entry.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from workers.engine.core.settings import EngineSettings
from workers.engine.store.catalogue import (
    catalogue_has,
    is_resolved_profile,
    model_for_profile,
    profile_spec,
)
from workers.engine.store.manifest import ModelStore

NVIDIA_PROC = Path("/proc/driver/nvidia/version")
#: The command a person runs to get the models ``auto`` wants (printed in every notice).
FETCH_COMMAND = "python manage.py models fetch --profile auto"
#: The SAM model of refine clicks and of every pipeline's proposals, before a profile maps it.
SAM_MODEL = "sam_vit_h"
#: Models no pipeline config names but some pipelines need (TAS's parser), fetched with a profile's set.
EXTRA_MODELS = ("spacy_en",)

_stores: dict[Path, ModelStore] = {}
_stores_lock = threading.Lock()


def gpu_present(device: str = "auto") -> bool:
    """Whether this machine runs models on a GPU: ``device`` ``cuda``/``cpu`` decides, ``auto`` looks for the
    NVIDIA driver (``/proc/driver/nvidia/version``) unless ``CUDA_VISIBLE_DEVICES`` hides every GPU."""
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1"):
        return False
    return NVIDIA_PROC.exists()


def target_profile(profile: str, device: str = "auto") -> str:
    """The plain profile ``profile`` wants on this machine: ``auto`` -> ``paper`` or ``cpu``; others unchanged.

    Raises:
        ConfigError: an unknown profile.
    """
    if not is_resolved_profile(profile):
        return profile
    targets = profile_spec(profile)["resolves_to"]
    return str(targets["gpu"] if gpu_present(device) else targets["cpu"])


def store_for(settings: EngineSettings) -> ModelStore:
    """One :class:`ModelStore` per store folder and process (its manifest is re-read only when it changes)."""
    with _stores_lock:
        store = _stores.get(settings.model_dir)
        if store is None:
            store = _stores[settings.model_dir] = ModelStore(settings.model_dir)
        return store


def model_on_disk(store: ModelStore, name: str) -> bool:
    """Whether the store records ``name`` and every recorded file exists (a ``stat`` each, no hashing)."""
    if not store.has(name):
        return False
    entry = store.entry(name)
    return all((store.path(name) / rel).is_file() for rel in entry.files)


def profile_models(profile: str, pipelines: list[str] | None = None) -> list[str]:
    """Every catalogued model the default configs of ``pipelines`` (default: all) name under the plain
    ``profile``, plus its SAM (refine) and the models no config names (spaCy); catalogue order kept."""
    from workers.engine.methods.catalogue import pipeline_entry

    names: list[str] = [model_for_profile(SAM_MODEL, profile)]
    for pipeline in pipelines or first_use_pipelines():
        names += config_models(pipeline_entry(pipeline).default_config(profile))
    names += list(EXTRA_MODELS)
    return list(dict.fromkeys(names))


def first_use_pipelines() -> list[str]:
    """Pipelines whose models a profile's first-use fetch gets and the stand-ins notice covers: all but the
    catalogue's ``opt_in`` ones (large or gated models, fetched by name: ``models fetch sam3``)."""
    from workers.engine.methods.catalogue import pipeline_entry, pipeline_names

    return [name for name in pipeline_names() if not pipeline_entry(name).opt_in]


def config_models(config: object) -> list[str]:
    """The catalogued model names a resolved config holds (its ``model_fields``, and an ensemble's members'
    models), in field order."""
    from workers.engine.methods.catalogue import config_models as keyed_models

    return [name for _key, name in keyed_models(config) if catalogue_has(name)]  # type: ignore[arg-type]


@dataclass(frozen=True)
class PipelineProfile:
    """The plain profile one pipeline runs with here.

    Attributes:
        pipeline: the pipeline's name.
        requested: the configured profile (``auto``, ``paper``, ...).
        target: the plain profile ``requested`` wants on this machine (``paper``/``cpu`` for ``auto``).
        profile: the plain profile used: ``target``, or the fallback (``tiny``) when models are missing.
        missing: the models of ``target`` not in the store (empty unless it fell back).
    """

    pipeline: str
    requested: str
    target: str
    profile: str
    missing: tuple[str, ...] = ()

    @property
    def fell_back(self) -> bool:
        """Whether the pipeline runs on stand-ins because models of its target are missing."""
        return self.profile != self.target


def pipeline_profile(
    settings: EngineSettings, pipeline: str, store: ModelStore | None = None
) -> PipelineProfile:
    """The plain profile ``pipeline`` runs with under ``settings`` (see the module docstring).

    Raises:
        UnknownPipelineError: no such pipeline. ConfigError: an unknown profile.
    """
    requested = settings.profile
    target = target_profile(requested, settings.device)
    if not is_resolved_profile(requested) or pipeline not in first_use_pipelines():
        return PipelineProfile(pipeline, requested, target, target)
    store = store or store_for(settings)
    wanted = _default_models(pipeline, target)
    missing = tuple(dict.fromkeys(name for name in wanted if not model_on_disk(store, name)))
    if not missing:
        return PipelineProfile(pipeline, requested, target, target)
    return PipelineProfile(pipeline, requested, target, str(profile_spec(requested)["fallback"]), missing)


@cache
def _default_models(pipeline: str, profile: str) -> tuple[str, ...]:
    """The models of ``pipeline``'s default config under the plain ``profile`` (fixed per process: every
    page asks, and building a config costs milliseconds)."""
    from workers.engine.methods.catalogue import pipeline_entry

    return tuple(config_models(pipeline_entry(pipeline).default_config(profile)))


def refine_profile(settings: EngineSettings, store: ModelStore | None = None) -> str:
    """The plain profile of refine clicks: ``auto``'s target when its SAM is in the store, else the fallback."""
    requested = settings.profile
    target = target_profile(requested, settings.device)
    if not is_resolved_profile(requested):
        return target
    if model_on_disk(store or store_for(settings), model_for_profile(SAM_MODEL, target)):
        return target
    return str(profile_spec(requested)["fallback"])


def profile_notice(settings: EngineSettings, store: ModelStore | None = None) -> str | None:
    """One line saying which pipelines rank with random-weight stand-ins and the command that fixes it;
    ``None`` when every pipeline runs on real models."""

    if settings.profile == "tiny":
        return (
            "Ranking uses random-weight stand-ins (RIS_MODEL_PROFILE=tiny), so the order of candidates means "
            f"nothing; for real models unset RIS_MODEL_PROFILE and run: {FETCH_COMMAND}"
        )
    if not is_resolved_profile(settings.profile):
        return None
    store = store or store_for(settings)
    fallen = [p for p in (pipeline_profile(settings, n, store) for n in first_use_pipelines()) if p.fell_back]
    if not fallen:
        return None
    missing = list(dict.fromkeys(name for p in fallen for name in p.missing))
    return (
        f"{', '.join(p.pipeline for p in fallen)} rank with random-weight stand-ins: "
        f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in the model store; "
        f"get {'it' if len(missing) == 1 else 'them'} with: {FETCH_COMMAND}"
    )
