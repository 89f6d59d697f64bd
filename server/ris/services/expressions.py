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
from server.ris.models import Expression, Image, SegmentationJob
from server.ris.services.jobs import job_enqueue_on_commit

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

    The web process checks the name against ``RIS_PIPELINES`` and that the overrides are a small JSON
    object; the worker resolves them against the pipeline's defaults and fails the job in words if a
    key or value is wrong.
    """
    name = pipeline or settings.RIS_DEFAULT_PIPELINE
    known = dict(settings.RIS_PIPELINES)
    if name not in known:
        raise InvalidInput(f"Unknown pipeline {name!r}; choose one of: {', '.join(sorted(known))}.")
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
    return name, json.loads(encoded)


def expression_create(
    *,
    image: Image,
    text: str,
    author: AbstractBaseUser | None,
    pipeline: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Expression:
    """Create an expression on ``image`` and its queued job; the job is sent to a worker on commit."""
    cleaned = expression_clean(text)
    pipeline_name, overrides = pipeline_check(pipeline=pipeline, config=config)
    with transaction.atomic():
        expression = Expression.objects.create(image=image, text=cleaned, author=author)
        job = SegmentationJob.objects.create(expression=expression, pipeline=pipeline_name, config=overrides)
        job_enqueue_on_commit(job_id=job.pk)
    return expression
