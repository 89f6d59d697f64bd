"""Writes on expressions: each new expression gets its own segmentation job, enqueued on commit."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from server.ris.errors import InvalidInput
from server.ris.models import Expression, Image, JobLane, SegmentationJob
from server.ris.services.jobs import job_enqueue_on_commit
from workers.engine.core.config import Config
from workers.engine.core.errors import ConfigError
from workers.engine.methods.catalogue import config_work, pipeline_names, resolve_config
from workers.engine.store.profiles import pipeline_profile

CONFIG_MAX_JSON_CHARS = 20_000


def expression_clean(text: Any) -> str:
    """The expression as it will be stored: control characters turned into spaces, ends stripped.

    Raises ``InvalidInput`` for a non-string, an empty or whitespace-only text, or one longer than
    ``Expression.MAX_LENGTH`` characters. Non-Latin scripts and emoji are kept as typed.
    """
    if not isinstance(text, str):
        raise InvalidInput("The expression must be text.")
    cleaned = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text).strip()
    # Format characters alone (zero-width spaces, a byte-order mark) show nothing: empty too. Inside
    # words they stay (the zero-width joiner builds emoji such as 👩\u200d💻).
    if not any(unicodedata.category(ch) != "Cf" for ch in cleaned):
        raise InvalidInput("The expression is empty; type a few words that name the object to segment.")
    if len(cleaned) > Expression.MAX_LENGTH:
        raise InvalidInput(
            f"The expression is {len(cleaned):,} characters long; the limit is {Expression.MAX_LENGTH:,}."
        )
    return cleaned


def pipeline_check(*, pipeline: str | None, config: Any) -> tuple[str, dict[str, Any]]:
    """Resolve the pipeline name (default ``RIS_DEFAULT_PIPELINE``) and check the config overrides.

    The name is checked against the torch-free pipeline catalogue (``workers.engine.methods.catalogue``) and
    the overrides are resolved against the pipeline's config at the door (unknown keys, wrong types and values
    out of bounds are a 400 naming the key), so a worker never receives a config it would refuse. The job
    keeps the overrides; the worker records the full config it ran.
    """
    name = pipeline or settings.RIS_DEFAULT_PIPELINE
    known = pipeline_names()
    if name not in known:
        raise InvalidInput(f"Unknown pipeline {name!r}; choose one of: {', '.join(known)}.")
    if config is None:
        return name, {}
    if not isinstance(config, Mapping):
        raise InvalidInput("config must be a JSON object of pipeline settings to override.")
    try:
        encoded = json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"config is not plain JSON ({error}).") from None
    if len(encoded) > CONFIG_MAX_JSON_CHARS:
        raise InvalidInput(
            f"config is {len(encoded):,} characters of JSON; the limit is {CONFIG_MAX_JSON_CHARS:,}."
        )
    overrides = json.loads(encoded)
    try:
        resolved = resolve_config(name, overrides, pipeline_profile(settings.RIS_ENGINE, name).profile)
    except ConfigError as error:
        raise InvalidInput(f"Invalid config for pipeline {name!r}: {error}.") from None
    work_check(name, resolved)
    return name, overrides


def work_check(name: str, config: Config) -> dict[str, int]:
    """Refuse a config whose estimated work per image passes the ceilings; the estimate otherwise.

    The estimate is ``workers.engine.methods.catalogue.config_work`` (image-encoder passes and mask-decoder
    prompts of every automatic-mask sub-config); the ceilings are ``RIS_JOB_MAX_EMBEDDINGS`` and
    ``RIS_JOB_MAX_PROMPTS``. Raises ``InvalidInput`` naming the key, the estimate and the ceiling.
    """
    work = config_work(config)
    limits = (
        ("embeddings", settings.RIS_JOB_MAX_EMBEDDINGS, "image-encoder passes", ["crop_n_layers"]),
        (
            "prompts",
            settings.RIS_JOB_MAX_PROMPTS,
            "mask-decoder prompts",
            ["points_per_side", "crop_n_layers"],
        ),
    )
    for key, ceiling, words, knobs in limits:
        for where, value in work.get(key, {}).items():
            if value > ceiling:
                lower = " or ".join(f"{where}.{knob}" for knob in knobs)
                raise InvalidInput(
                    f"Invalid config for pipeline {name!r}: '{where}' asks for {value:,} {words} per image; "
                    f"the limit is {ceiling:,} (RIS_JOB_MAX_{key.upper()}). Lower {lower}."
                )
    return {key: sum(values.values()) for key, values in work.items()}


def expression_create(
    *,
    image: Image,
    text: str,
    author: AbstractBaseUser | None,
    pipeline: str | None = None,
    config: Mapping[str, Any] | None = None,
    lane: str = JobLane.INTERACTIVE,
) -> Expression:
    """Create an expression on ``image`` and its queued job; the job is sent to a worker on commit.

    ``lane``: ``interactive`` for an expression a person typed on one image, ``background`` for bulk rows.
    """
    cleaned = expression_clean(text)
    pipeline_name, overrides = pipeline_check(pipeline=pipeline, config=config)
    with transaction.atomic():
        expression = Expression.objects.create(image=image, text=cleaned, author=author)
        job = SegmentationJob.objects.create(
            expression=expression, pipeline=pipeline_name, config=overrides, lane=lane
        )
        job_enqueue_on_commit(job_id=job.pk)
    return expression
