"""Expressions in bulk from a CSV or JSON file: one row, one expression, one job.

CSV: a header naming the image column (``image``, ``image_name``, ``file_name``, ``filename`` or
``name``) and the expression column (``expression``, ``text``, ``sentence`` or ``caption``), optional
``pipeline``; or, with no such header, two columns ``image,expression``. JSON: a list of objects with
the same keys, or ``{"expressions": [...]}``. ``image`` is the uploaded file's original name in the
project.

Every row is created on its own (its own transaction, its job enqueued when that commits), so a bad
row (unknown image, empty text, unknown pipeline) is reported with its row number and the others go
on. A file that cannot be read at all (not UTF-8, not CSV/JSON, too many rows) is refused whole.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from server.ris.errors import InvalidInput, RisError
from server.ris.jsonlimits import JsonTooDeep, loads_bounded
from server.ris.models import Image, JobLane, Project
from server.ris.services import expression_create
from server.ris.services.expressions import pipeline_check

MAX_BULK_ROWS = 10_000
MAX_BULK_BYTES = 5 * 1024 * 1024
IMAGE_KEYS = ("image", "image_name", "file_name", "filename", "name")
TEXT_KEYS = ("expression", "text", "sentence", "caption")


@dataclass(frozen=True)
class BulkRow:
    """One row as read: ``row`` is its 1-based number in the file (CSV: the line number)."""

    row: int
    image: Any
    text: Any
    pipeline: Any = None


@dataclass
class BulkResult:
    created: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"created": self.created, "errors": self.errors}


def _pick(record: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in record.items()}
    for key in keys:
        if key in lowered:
            return lowered[key]
    return None


def _rows_from_csv(text: str, name: str) -> Iterator[BulkRow]:
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    for record in reader:
        if not any(cell.strip() for cell in record):
            continue
        lowered = [cell.strip().lower() for cell in record]
        if header is None and any(k in lowered for k in IMAGE_KEYS) and any(k in lowered for k in TEXT_KEYS):
            header = lowered
            continue
        if header is None:
            if len(record) < 2:
                raise InvalidInput(
                    f"{name}: line {reader.line_num} has {len(record)} column; the file needs a header with "
                    "'image' and 'expression' columns, or two columns image,expression."
                )
            header = ["image", "expression"] + [f"extra{i}" for i in range(len(record) - 2)]
        values = dict(zip(header, record, strict=False))
        yield BulkRow(
            row=reader.line_num,
            image=_pick(values, IMAGE_KEYS),
            text=_pick(values, TEXT_KEYS),
            pipeline=(values.get("pipeline") or "").strip() or None,
        )


def _rows_from_json(text: str, name: str) -> Iterator[BulkRow]:
    try:
        data = loads_bounded(text)
    except JsonTooDeep as error:
        raise InvalidInput(f"{name}: {error}") from None
    except ValueError as error:
        raise InvalidInput(f"{name} is not valid JSON: {error}.") from None
    if isinstance(data, Mapping):
        data = data.get("expressions", data.get("items"))
    if not isinstance(data, list):
        raise InvalidInput(
            f'{name}: expected a list of {{image, expression}} objects, or {{"expressions": [...]}}.'
        )
    for index, record in enumerate(data, start=1):
        if not isinstance(record, Mapping):
            yield BulkRow(row=index, image=None, text=None, pipeline=None)
            continue
        yield BulkRow(
            row=index,
            image=_pick(record, IMAGE_KEYS),
            text=_pick(record, TEXT_KEYS),
            pipeline=_pick(record, ("pipeline",)),
        )


def bulk_rows_parse(*, data: bytes, name: str) -> list[BulkRow]:
    """Rows of a CSV or JSON file (JSON when the name ends in .json or the text starts with [ or {)."""
    if len(data) > MAX_BULK_BYTES:
        raise InvalidInput(f"{name} is {len(data):,} bytes; the limit for a bulk file is {MAX_BULK_BYTES:,}.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"{name} is not UTF-8 text; save the CSV or JSON file as UTF-8.") from None
    if not text.strip():
        raise InvalidInput(f"{name} is empty.")
    is_json = name.lower().endswith(".json") or text.lstrip()[:1] in ("[", "{")
    try:
        rows = list(_rows_from_json(text, name) if is_json else _rows_from_csv(text, name))
    except csv.Error as error:
        raise InvalidInput(f"{name} is not a readable CSV file: {error}.") from None
    if not rows:
        raise InvalidInput(f"{name} has no rows.")
    if len(rows) > MAX_BULK_ROWS:
        raise InvalidInput(f"{name} has {len(rows):,} rows; the limit is {MAX_BULK_ROWS:,} per file.")
    return rows


def _image_index(project: Project) -> dict[str, list[Image]]:
    index: dict[str, list[Image]] = {}
    for image in Image.objects.filter(project=project).order_by("id"):
        index.setdefault(image.original_name, []).append(image)
    return index


def bulk_config_parse(text: Any) -> dict[str, Any] | None:
    """The batch's ``config`` form field: JSON text of an object, or nothing (``None``).

    Raises ``InvalidInput`` for text that is not JSON or not an object.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if not isinstance(text, str):
        raise InvalidInput("config must be the JSON text of an object of pipeline settings.")
    try:
        value = loads_bounded(text)
    except ValueError as error:
        raise InvalidInput(f"config is not JSON ({error}).") from None
    if not isinstance(value, dict):
        raise InvalidInput("config must be a JSON object of pipeline settings to override.")
    return value


def expressions_bulk_create(
    *,
    project: Project,
    data: bytes,
    name: str,
    author: AbstractBaseUser | None,
    pipeline: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> BulkResult:
    """Create one expression and job per row of a CSV / JSON file; bad rows are reported, not fatal.

    ``pipeline`` is the default for rows that name none. Raises ``InvalidInput`` only when the file
    as a whole cannot be read.
    """
    if config is not None:  # checked once at the door: a bad config is the whole batch's 400
        pipeline_check(pipeline=pipeline, config=config)
    rows = bulk_rows_parse(data=data, name=name)
    images = _image_index(project)
    result = BulkResult()
    for row in rows:
        image_name = row.image.strip() if isinstance(row.image, str) else row.image
        if not image_name or not isinstance(image_name, str):
            result.errors.append({"row": row.row, "error": "The row names no image."})
            continue
        matches = images.get(image_name, [])
        if not matches:
            result.errors.append(
                {
                    "row": row.row,
                    "image": image_name,
                    "error": f"No image named {image_name!r} in this project.",
                }
            )
            continue
        if len(matches) > 1:
            result.errors.append(
                {
                    "row": row.row,
                    "image": image_name,
                    "error": f"{len(matches)} images are named {image_name!r}; rename one and try again.",
                }
            )
            continue
        try:
            expression = expression_create(
                image=matches[0],
                text=row.text,
                author=author,
                pipeline=(row.pipeline if isinstance(row.pipeline, str) and row.pipeline else None)
                or pipeline,
                config=config,
                lane=JobLane.BACKGROUND,  # bulk rows never stand in front of a person's expression
            )
        except RisError as error:
            result.errors.append({"row": row.row, "image": image_name, "error": error.message})
            continue
        job = expression.jobs.order_by("-id").first()
        result.created.append(
            {
                "row": row.row,
                "image_id": matches[0].pk,
                "expression_id": expression.pk,
                "job_id": job.pk if job else None,
            }
        )
    return result
