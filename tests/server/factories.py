"""Builders of server objects for tests, going through the real services where a service exists."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage

from server.ris.models import Expression, Image, JobState, Project, SegmentationJob
from server.ris.services import expression_create, image_upload
from server.ris.services.rle import rle_from_mask


def png_file(
    name: str = "photo.png", width: int = 40, height: int = 30, color: Any = (10, 200, 30)
) -> SimpleUploadedFile:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), color).save(buffer, format="PNG")
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="image/png")


def image_make(
    project: Project,
    user: Any,
    *,
    name: str = "photo.png",
    color: Any = (10, 200, 30),
    width: int = 40,
    height: int = 30,
) -> Image:
    stored, rejected = image_upload(
        project=project, files=[png_file(name, width, height, color)], uploaded_by=user
    )
    assert not rejected, rejected
    return stored[0].image


def expression_make(image: Image, user: Any, text: str = "the green square") -> Expression:
    return expression_create(image=image, text=text, author=user)


def job_of(expression: Expression) -> SegmentationJob:
    return expression.jobs.get()


def candidate_dicts(height: int, width: int, n: int = 3) -> list[dict[str, Any]]:
    """``n`` ranked candidates: horizontal bands of the image, best first."""
    items = []
    for rank in range(n):
        mask = np.zeros((height, width), dtype=bool)
        top = rank * height // n
        bottom = (rank + 1) * height // n
        mask[top:bottom, :] = True
        items.append(
            {
                "rank": rank,
                "rle": rle_from_mask(mask),
                "bbox_xyxy": [0.0, float(top), float(width), float(bottom)],
                "area": int(mask.sum()),
                "score": 1.0 - rank * 0.1,
                "components": {"s_van": 0.5 - rank * 0.05},
            }
        )
    return items


def job_make_running(job: SegmentationJob) -> SegmentationJob:
    SegmentationJob.objects.filter(pk=job.pk).update(state=JobState.RUNNING)
    job.refresh_from_db()
    return job
