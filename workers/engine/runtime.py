"""The engine's facade: ``Engine.prepare / predict / refine`` (one engine per worker process, ``get_engine``).

An engine owns what lives as long as the process:

- the model store and the :class:`~workers.engine.hub.ModelHub` (models and the wrappers built on them stay
  loaded, LRU-evicted together under ``model_memory_budget_mb``);
- the per-image ``FeatureCache`` (memory LRU under ``cache_memory_mb`` plus ``cache_dir`` on disk), shared by
  every pipeline, so a second expression on an image, or a job after ``prepare``, does no image work;
- the ``Meter`` of model calls and seconds (job timings, benchmark costs);
- built pipelines, memoised by (name, resolved config); they hold no model.

Configs are resolved once, here: a job's overrides over the profile's defaults (the pipeline catalogue's
:meth:`~workers.engine.methods.catalogue.PipelineEntry.resolve`). :meth:`Engine.predict` returns the
candidates together with the resolved config (:class:`Prediction`), so the job and the benchmark record what
actually ran.

For the interactive loop, :meth:`Engine.predict` takes ``on_progress(stage, done, total)`` (long image work
reports between its units, e.g. ``("proposals", points done, points in all)``; a cancellation check there
may raise and stops the work, nothing half-done cached) and ``on_partial(prediction)`` (early candidates
from a coarse ``COARSE_POINTS_PER_SIDE`` grid on an image without proposals yet, ``partial=True``, to show
at once and replace by the returned final prediction). The SAM embedding made by automatic mask generation
is cached per image, so :meth:`Engine.refine` on that image runs only the prompt decoder.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from workers.engine.blocks.masks import decode_rle_one, encode_rle_one
from workers.engine.blocks.proposals.cached import EMBEDDING_KIND, embedding_params, proposals_cached
from workers.engine.blocks.proposals.fast_amg import bfloat16_is_fast
from workers.engine.blocks.proposals.refine import ImageEmbedding, PromptRefiner
from workers.engine.core.cache import FeatureCache, ImageContext
from workers.engine.core.config import config_hash
from workers.engine.core.errors import BadInputError, ModelStoreError
from workers.engine.core.meter import Meter
from workers.engine.core.precision import autocast_context
from workers.engine.core.settings import EngineSettings
from workers.engine.core.types import Candidate, ImageInput
from workers.engine.hub import ModelHub
from workers.engine.methods.base import Pipeline
from workers.engine.methods.catalogue import pipeline_entry, pipeline_names
from workers.engine.methods.registry import pipeline_class
from workers.engine.store.catalogue import catalogue_has, model_for_profile
from workers.engine.store.manifest import ModelStore
from workers.engine.store.profiles import pipeline_profile, refine_profile

_MAX_BUILT_PIPELINES = 16

#: The SAM model that answers refine clicks, before the profile maps it to its stand-in.
REFINE_MODEL = "sam_vit_h"

#: Points per side of the coarse grid behind early candidates (``Engine.predict(on_partial=...)``).
COARSE_POINTS_PER_SIDE = 8

#: ``progress(stage, done, total)``: long image work reports between its units; may raise to stop it.
ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Prediction:
    """What :meth:`Engine.predict` returns.

    Attributes:
        candidates: one ranked list per expression (best first, at most ``top_k`` each; ``[]`` when the image
            has no proposal).
        pipeline: the pipeline's name.
        config: the full JSON-able config that ran (profile defaults + the caller's overrides).
        profile: the plain model profile the pipeline ran with (``auto`` resolved: ``paper``, ``cpu`` or
            ``tiny``).
        partial: ``True`` for early candidates (``on_partial``): ranked over a coarse set of proposals, to
            be replaced by the final prediction.
    """

    candidates: list[list[Candidate]]
    pipeline: str
    config: dict[str, Any]
    profile: str
    partial: bool = False


class Engine:
    """Ranks masks for expressions with any catalogued pipeline; see the module docstring.

    Args:
        settings: the :class:`~workers.engine.core.settings.EngineSettings` (from Django's ``RIS_ENGINE`` or
            ``EngineSettings.from_env()``).
        hub: a hub to use instead of building one over ``settings.model_dir`` (tests).
    """

    def __init__(self, settings: EngineSettings, *, hub: ModelHub | None = None) -> None:
        self.settings = settings
        self.meter = Meter()
        self.store = ModelStore(settings.model_dir)
        self.hub = hub or ModelHub(
            self.store, device=settings.device, memory_budget_mb=settings.model_memory_budget_mb
        )
        self.cache = FeatureCache(memory_bytes=settings.cache_memory_mb << 20, cache_dir=settings.cache_dir)
        self._pipelines: OrderedDict[tuple[str, str], Pipeline] = OrderedDict()
        self._lock = threading.RLock()
        self._refine_lock = threading.Lock()

    # -- pipelines ----------------------------------------------------------------------------------
    def pipelines(self) -> list[str]:
        """Names of every catalogued pipeline."""
        return pipeline_names()

    def resolve_config(self, pipeline: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The full JSON-able config: the pipeline's defaults, the profile's models, then ``overrides``.

        Raises:
            UnknownPipelineError: no such pipeline.
            ConfigError: an unknown key, a wrong type or a value out of bounds (naming the dotted key).
        """
        return pipeline_entry(pipeline).resolve(overrides, self.profile_for(pipeline)).to_dict()

    def profile_for(self, pipeline: str) -> str:
        """The plain model profile ``pipeline`` runs with (``auto`` resolved by machine and store)."""
        return pipeline_profile(self.settings, pipeline, self.store).profile

    def pipeline(self, name: str, config: Mapping[str, Any] | None = None) -> Pipeline:
        """The built pipeline for ``name`` and ``config`` (overrides of the profile defaults), memoised."""
        resolved = pipeline_entry(name).resolve(config, self.profile_for(name))
        key = (name, config_hash(resolved.to_dict()))
        with self._lock:
            built = self._pipelines.get(key)
            if built is None:
                built = pipeline_class(name)(
                    resolved, hub=self.hub, cache=self.cache, meter=self.meter, name=name
                )
                self._pipelines[key] = built
                while len(self._pipelines) > _MAX_BUILT_PIPELINES:
                    self._pipelines.popitem(last=False)
            else:
                self._pipelines.move_to_end(key)
            return built

    def check_models(self, config: Any) -> None:
        """Verify every store model a resolved config names, before any work: a job whose model is missing
        fails at once, naming the model, the config key and the command that gets it, not after minutes of
        proposals.

        Raises:
            ModelStoreError: a named model is missing or fails its checksums.
        """
        from workers.engine.methods.catalogue import config_models

        store = getattr(self.hub, "store", None) or self.store
        for key, value in config_models(config):  # an ensemble's members' models too
            if catalogue_has(str(value)):
                try:
                    store.verify(str(value))
                except ModelStoreError as error:
                    raise ModelStoreError(f"config key {key!r}: {error}") from None

    def context(self, image: ImageInput, progress: ProgressCallback | None = None) -> ImageContext:
        """An :class:`ImageContext` on the engine's cache and meter, reporting to ``progress``."""
        if not isinstance(image, ImageInput):
            raise BadInputError(f"the engine needs an ImageInput, got {type(image).__name__}")
        return ImageContext(image=image, cache=self.cache, meter=self.meter, progress=progress)

    def predict(
        self,
        image: ImageInput,
        expressions: Sequence[str],
        *,
        pipeline: str,
        config: Mapping[str, Any] | None = None,
        top_k: int | None = None,
        isolated: bool = False,
        on_progress: ProgressCallback | None = None,
        on_partial: Callable[[Prediction], None] | None = None,
    ) -> Prediction:
        """Rank ``image``'s masks for each expression with ``pipeline`` under ``config`` (overrides).

        ``isolated=True`` does the image-level work afresh in a throwaway in-memory cache, neither reading
        nor filling the engine's cache: the peers' per-ref schedule, for cost measurements only
        (``manage.py benchmark --schedule per-ref``).

        Args:
            on_progress: ``on_progress(stage, done, total)`` between units of long image work (the automatic
                mask generator: ``("proposals", points done, points in all)``); what it raises (a cancelled
                job) stops the work and propagates.
            on_partial: early candidates. When given, and the image has no proposals under this config yet,
                and the pipeline's generator grid is finer than ``COARSE_POINTS_PER_SIDE``: proposals on the
                coarse grid first (same SAM embedding, which the full run then reuses), ranked by the same
                pipeline, handed to ``on_partial`` as a ``Prediction`` with ``partial=True``; then the full
                run, returned as usual. Otherwise ``on_partial`` is not called.

        Raises:
            BadInputError: a single string instead of a list, an empty expression, or ``top_k < 1``.
            UnknownPipelineError, ConfigError: as :meth:`resolve_config`.
        """
        if isinstance(expressions, str) or not isinstance(expressions, Sequence):
            raise BadInputError("expressions must be a list of strings, not a single string")
        if top_k is not None and top_k < 1:
            raise BadInputError(f"top_k must be a positive number of candidates, got {top_k}")
        ctx = self.context(image, on_progress)
        if isolated:
            ctx = ImageContext(
                image=image,
                cache=FeatureCache(memory_bytes=self.cache.memory_bytes),
                meter=self.meter,
                progress=on_progress,
            )
        built = self.pipeline(pipeline, config)
        self.check_models(built.config)
        if on_partial is not None and not isolated:
            coarse = self._coarse_pipeline(ctx, pipeline, built)
            if coarse is not None:
                on_partial(self._run(ctx, coarse, pipeline, expressions, top_k, partial=True))
        return self._run(ctx, built, pipeline, expressions, top_k)

    def _run(
        self,
        ctx: ImageContext,
        built: Pipeline,
        pipeline: str,
        expressions: Sequence[str],
        top_k: int | None,
        *,
        partial: bool = False,
    ) -> Prediction:
        autocast = autocast_context(self.settings.autocast, getattr(self.hub, "device", "cpu"), built.config)
        with self.meter.stage(f"predict:{pipeline}" + (":coarse" if partial else "")), autocast:
            results = built.predict(ctx, list(expressions))
        if top_k is not None:
            results = [ranked[:top_k] for ranked in results]
        return Prediction(
            results, pipeline, built.config.to_dict(), self.profile_for(pipeline), partial=partial
        )

    def _coarse_pipeline(self, ctx: ImageContext, name: str, built: Pipeline) -> Pipeline | None:
        """The same pipeline on a ``COARSE_POINTS_PER_SIDE`` grid, or ``None`` when early candidates would
        not come earlier: no SAM generator in the config, a grid already that coarse, or proposals cached."""
        config = built.config
        amg = getattr(config, "amg", None)
        source = getattr(config, "proposal_source", None)
        if amg is None or not isinstance(source, str) or not catalogue_has(source):
            return None
        if amg.points_per_side <= COARSE_POINTS_PER_SIDE or proposals_cached(ctx, self.hub, source, amg):
            return None
        early_amg = replace(
            amg,
            points_per_side=COARSE_POINTS_PER_SIDE,
            skip_covered_points=True,  # early candidates: the generator's speed settings (docs/perf/amg.md)
            decoder_precision="bfloat16"
            if bfloat16_is_fast(getattr(self.hub, "device", "cpu"))
            else amg.decoder_precision,
        )
        return self.pipeline(name, replace(config, amg=early_amg))

    def prepare(
        self,
        image: ImageInput,
        *,
        pipeline: str,
        config: Mapping[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        """Do ``pipeline``'s image-level work into the cache, so a later ``predict`` does none
        (``on_progress`` as in :meth:`predict`)."""
        ctx = self.context(image, on_progress)
        built = self.pipeline(pipeline, config)
        self.check_models(built.config)
        autocast = autocast_context(self.settings.autocast, getattr(self.hub, "device", "cpu"), built.config)
        with self.meter.stage(f"prepare:{pipeline}"), autocast:
            built.prepare(ctx)

    # -- refine -------------------------------------------------------------------------------------
    def refine_model(self) -> str:
        """The SAM model answering refine prompts: the profile's stand-in for SAM ViT-H."""
        return model_for_profile(REFINE_MODEL, refine_profile(self.settings, self.store))

    def image_embedding(self, ctx: ImageContext, sam_name: str) -> ImageEmbedding:
        """SAM model ``sam_name``'s embedding of ``ctx``'s image, computed once per image and kept in the cache."""
        refiner = self._refiner(sam_name)

        def embed() -> dict[str, Any]:
            with self.meter.model_call(f"{sam_name}:encoder"):
                embedding = refiner.set_image(ctx.rgb)
            return embedding.to_state()

        state = ctx.cached(EMBEDDING_KIND, embedding_params(self.hub, sam_name), embed)
        return ImageEmbedding.from_state(state)

    def _refiner(self, sam_name: str) -> PromptRefiner:
        return self.hub.wrapper(sam_name, "refiner", PromptRefiner)

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
        """SAM's mask for clicks (label 1 adds, 0 removes), an optional ``xyxy`` box and an optional previous mask.

        The image is embedded once per (image, SAM model) and the embedding cached like other image work.
        Returns the mask as COCO RLE (``counts`` as ``str``).

        Raises:
            BadInputError: prompts off the image, a mask of another size, no point and no box.
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
        with self._refine_lock, self.meter.stage("refine"), self.meter.active():
            refiner = self._refiner(sam_name)
            refiner.set_embedding(self.image_embedding(ctx, sam_name))
            with self.meter.model_call(f"{sam_name}:decoder"):
                mask, _score = refiner.refine(points_xy, labels, box_xyxy, previous)
        return encode_rle_one(np.asarray(mask, dtype=bool))


_ENGINE: Engine | None = None
_ENGINE_LOCK = threading.Lock()


def get_engine(settings: EngineSettings | None = None) -> Engine:
    """The process's engine, built on first call from ``settings`` (default ``EngineSettings.from_env()``;
    a worker passes Django's ``settings.RIS_ENGINE``, the same object)."""
    global _ENGINE
    if _ENGINE is None:
        with _ENGINE_LOCK:
            if _ENGINE is None:
                _ENGINE = Engine(settings or EngineSettings.from_env())
    return _ENGINE


def reset_engine() -> None:
    """Forget the process's engine (tests; a worker after its settings changed)."""
    global _ENGINE
    with _ENGINE_LOCK:
        _ENGINE = None
