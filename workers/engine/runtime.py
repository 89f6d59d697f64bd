"""The engine's entry point: ``Engine`` (one per worker process, see ``get_engine``).

It owns the pieces that live as long as the process:

- the model store and the ``ModelHub`` (models stay loaded, LRU-evicted under ``model_memory_budget_mb``);
- the per-image ``FeatureCache`` (memory LRU under ``cache_memory_mb`` plus ``cache_dir`` on disk), shared
  by every pipeline, so a second expression on an image, or a job after ``prepare``, does no image work;
- the ``Meter`` of model calls and seconds (job timings, benchmark costs);
- built pipelines, memoised by (name, resolved config).

Profiles: ``"tiny"`` uses the random tiny stand-ins for every model but SAM (MobileSAM's real weights
propose masks), ``"paper"`` the papers' models (CLIP ViT-B/32 and ViT-B/16, SAM ViT-H). A job's config
overrides the profile's defaults key by key; ``resolve_config`` returns the full config the job records.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workers.engine.cache import FeatureCache, config_hash
from workers.engine.errors import BadInputError, ConfigError
from workers.engine.hub import ModelHub
from workers.engine.masks import decode_rle_one, encode_rle_one
from workers.engine.meter import Meter
from workers.engine.pipelines import ImageContext, Pipeline, list_pipelines, model_for_profile, resolve_config
from workers.engine.pipelines.registry import PROFILES
from workers.engine.pipelines.shared import model_fingerprint
from workers.engine.proposals import ImageEmbedding, PromptRefiner
from workers.engine.store import ModelStore
from workers.engine.types import Candidate, ImageInput

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_MAX_BUILT_PIPELINES = 16


def _env_path(environ: Mapping[str, str], name: str, default: Path) -> Path | None:
    raw = environ.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in ("", "none", "off"):
        return None
    path = Path(raw).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from exc
    if value <= 0:
        raise ConfigError(f"environment variable {name} must be positive, got {value}")
    return value


@dataclass(frozen=True)
class EngineSettings:
    """How an engine is set up.

    Attributes:
        model_dir: the model store (``$RIS_MODEL_DIR``).
        cache_dir: the on-disk per-image cache, ``None`` for memory only (``$RIS_CACHE_DIR``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (``$RIS_DEVICE``).
        profile: ``"tiny"`` or ``"paper"`` (``$RIS_MODEL_PROFILE``).
        model_memory_budget_mb: loaded models' parameter bytes cap (``$RIS_MODEL_MEMORY_MB``).
        cache_memory_mb: the in-memory cache's cap (``$RIS_CACHE_MEMORY_MB``).
    """

    model_dir: Path
    cache_dir: Path | None
    device: str = "auto"
    profile: str = "tiny"
    model_memory_budget_mb: int = 8192
    cache_memory_mb: int = 1024

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"model profile {self.profile!r} is not one of {', '.join(PROFILES)}")
        if self.model_memory_budget_mb <= 0 or self.cache_memory_mb < 0:
            raise ConfigError("model_memory_budget_mb must be > 0 and cache_memory_mb >= 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EngineSettings:
        """Settings from ``RIS_MODEL_DIR``, ``RIS_CACHE_DIR`` (empty or ``none``: memory only), ``RIS_DEVICE``,
        ``RIS_MODEL_PROFILE``, ``RIS_MODEL_MEMORY_MB`` and ``RIS_CACHE_MEMORY_MB``; relative paths are taken
        from the project root, defaults under ``$RIS_VAR_DIR`` (``var/``)."""
        env = os.environ if environ is None else environ
        var_dir = _env_path(env, "RIS_VAR_DIR", PROJECT_ROOT / "var") or PROJECT_ROOT / "var"
        model_dir = _env_path(env, "RIS_MODEL_DIR", var_dir / "models")
        if model_dir is None:
            raise ConfigError("RIS_MODEL_DIR must name a folder")
        return cls(
            model_dir=model_dir,
            cache_dir=_env_path(env, "RIS_CACHE_DIR", var_dir / "cache"),
            device=env.get("RIS_DEVICE", "auto") or "auto",
            profile=env.get("RIS_MODEL_PROFILE", "tiny") or "tiny",
            model_memory_budget_mb=_env_int(env, "RIS_MODEL_MEMORY_MB", 8192),
            cache_memory_mb=_env_int(env, "RIS_CACHE_MEMORY_MB", 1024),
        )


class Engine:
    """Ranks masks for expressions with any registered pipeline; see the module docstring.

    Attributes:
        settings: the :class:`EngineSettings`.
        store, hub: the model store and the loaded-model hub.
        cache: the per-image cache.
        meter: model calls and seconds per stage and per model.
    """

    def __init__(self, settings: EngineSettings, *, hub: Any | None = None) -> None:
        self.settings = settings
        self.meter = Meter()
        self.store = ModelStore(settings.model_dir)
        self.hub = (
            hub
            if hub is not None
            else ModelHub(
                self.store, device=settings.device, memory_budget_mb=settings.model_memory_budget_mb
            )
        )
        self.cache = FeatureCache(memory_bytes=settings.cache_memory_mb << 20, cache_dir=settings.cache_dir)
        self._pipelines: OrderedDict[tuple[str, str], Pipeline] = OrderedDict()
        self._refiners: dict[str, PromptRefiner] = {}
        self._lock = threading.RLock()
        self._refine_lock = threading.Lock()

    # -- pipelines ----------------------------------------------------------------------------------
    def pipelines(self) -> list[str]:
        """Names of every registered pipeline."""
        return list_pipelines()

    def resolve_config(self, pipeline: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The full JSON-able config: the paper's defaults, the profile's model names, then ``overrides``.

        Raises ``UnknownPipelineError`` or ``ConfigError`` (naming the key).
        """
        return resolve_config(pipeline, overrides, self.settings.profile).to_dict()

    def pipeline(self, name: str, config: Mapping[str, Any] | None = None) -> Pipeline:
        """The built pipeline for ``name`` and ``config`` (overrides of the profile defaults), memoised."""
        resolved = resolve_config(name, config, self.settings.profile)
        key = (name, config_hash(resolved.to_dict()))
        with self._lock:
            built = self._pipelines.get(key)
            if built is None:
                from workers.engine.pipelines import pipeline_class

                built = pipeline_class(name)(resolved, hub=self.hub, cache=self.cache, meter=self.meter)
                self._pipelines[key] = built
                while len(self._pipelines) > _MAX_BUILT_PIPELINES:
                    self._pipelines.popitem(last=False)
            else:
                self._pipelines.move_to_end(key)
            return built

    def context(self, image: ImageInput) -> ImageContext:
        if not isinstance(image, ImageInput):
            raise BadInputError(f"the engine needs an ImageInput, got {type(image).__name__}")
        return ImageContext(image=image, cache=self.cache, meter=self.meter)

    def predict(
        self,
        image: ImageInput,
        expressions: Sequence[str],
        *,
        pipeline: str,
        config: Mapping[str, Any] | None = None,
        top_k: int | None = None,
    ) -> list[list[Candidate]]:
        """One ranked candidate list per expression (at most ``top_k`` each); ``[]`` where no proposal exists."""
        if isinstance(expressions, str) or not isinstance(expressions, Sequence):
            raise BadInputError("expressions must be a list of strings, not a single string")
        if top_k is not None and top_k < 1:
            raise BadInputError(f"top_k must be a positive number of candidates, got {top_k}")
        ctx = self.context(image)
        built = self.pipeline(pipeline, config)
        with self.meter.stage(f"predict:{pipeline}"):
            results = built.predict(ctx, list(expressions))
        if top_k is not None:
            results = [ranked[:top_k] for ranked in results]
        return results

    def prepare(self, image: ImageInput, *, pipeline: str, config: Mapping[str, Any] | None = None) -> None:
        """Do ``pipeline``'s image-level work into the cache, so a later ``predict`` does none."""
        ctx = self.context(image)
        built = self.pipeline(pipeline, config)
        with self.meter.stage(f"prepare:{pipeline}"):
            built.prepare(ctx)

    # -- refine -------------------------------------------------------------------------------------
    def refine_model(self) -> str:
        """The SAM model answering refine prompts: the profile's default proposal model."""
        return model_for_profile("sam_vit_h", self.settings.profile)

    def _refiner(self, sam_name: str) -> PromptRefiner:
        sam = self.hub.get(sam_name)
        refiner = self._refiners.get(sam_name)
        if refiner is None or refiner.sam is not sam:  # first use, or the hub reloaded the model
            refiner = self._refiners[sam_name] = PromptRefiner(sam)
        return refiner

    def refine(
        self,
        image: ImageInput,
        *,
        points_xy: Sequence[tuple[float, float]],
        labels: Sequence[int],
        box_xyxy: tuple[float, float, float, float] | None = None,
        mask_rle: dict | None = None,
        sam_model: str | None = None,
    ) -> dict:
        """SAM's mask for clicks (label 1 adds, 0 removes), an optional box and an optional previous mask.

        The image is embedded once per (image, SAM model) and the embedding cached like other image work.
        Returns the mask as COCO RLE (``counts`` as ``str``).
        """
        ctx = self.context(image)
        sam_name = sam_model or self.refine_model()
        previous = None
        if mask_rle is not None:
            previous = decode_rle_one(mask_rle)
            if previous.shape != (image.height, image.width):
                raise BadInputError(
                    f"the mask to refine is {previous.shape[0]} x {previous.shape[1]}, "
                    f"the image {image.height} x {image.width}"
                )
        with self._refine_lock, self.meter.stage("refine"):
            refiner = self._refiner(sam_name)

            def embed() -> dict[str, Any]:
                with self.meter.model_call(f"{sam_name}:encoder"):
                    embedding = refiner.set_image(image.rgb)
                return {
                    "features": embedding.features.detach().cpu(),
                    "original_size": tuple(embedding.original_size),
                    "input_size": tuple(embedding.input_size),
                }

            params = {"model": model_fingerprint(self.hub, sam_name)}
            state = ctx.cached("sam_embedding", params, embed)
            refiner.set_embedding(
                ImageEmbedding(
                    features=state["features"],
                    original_size=tuple(int(s) for s in state["original_size"]),
                    input_size=tuple(int(s) for s in state["input_size"]),
                )
            )
            with self.meter.model_call(f"{sam_name}:decoder"):
                mask, _score = refiner.refine(points_xy, labels, box_xyxy, previous)
        return encode_rle_one(np.asarray(mask, dtype=bool))


_ENGINE: Engine | None = None
_ENGINE_LOCK = threading.Lock()


def get_engine() -> Engine:
    """The process's engine, built on first call from ``EngineSettings.from_env()``."""
    global _ENGINE
    if _ENGINE is None:
        with _ENGINE_LOCK:
            if _ENGINE is None:
                _ENGINE = Engine(EngineSettings.from_env())
    return _ENGINE


def reset_engine() -> None:
    """Forget the process's engine (tests; a worker after its settings changed)."""
    global _ENGINE
    with _ENGINE_LOCK:
        _ENGINE = None
