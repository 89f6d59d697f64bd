"""Fixtures of the annotator's server-side tests: a project with images, expressions whose jobs have
candidates, and a signed-in Django test client.

- ``reviewed_project``: ``user``'s project with two images (40x30 and 24x20 PNGs) and four expressions:
  one accepted (rank-1 candidate), one corrected (a hand-made mask), one rejected, one unreviewed.
  Returns a dict with the objects and the expected masks (``H x W`` bool) of the exported ones.
- ``web_client``: ``django.test.Client`` signed in as ``user``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from server.ris.services import job_succeed, review_create
from server.ris.services.rle import rle_from_mask
from tests.server.factories import candidate_dicts, expression_make, image_make, job_make_running, job_of


def job_with_candidates(expression, n: int = 3):
    """Run the expression's job to success with ``n`` band-shaped candidates; returns the job."""
    job = job_make_running(job_of(expression))
    image = expression.image
    assert job_succeed(job_id=job.pk, candidates=candidate_dicts(image.height, image.width, n))
    job.refresh_from_db()
    return job


@pytest.fixture
def web_client(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def reviewed_project(user, project) -> dict[str, Any]:
    first = image_make(project, user, name="street.png", color=(10, 200, 30), width=40, height=30)
    second = image_make(project, user, name="park.png", color=(200, 10, 30), width=24, height=20)

    accepted = expression_make(first, user, "the middle band")
    job = job_with_candidates(accepted)
    chosen = job.candidates.get(rank=1)
    review_create(expression=accepted, decision="accepted", reviewer=user, candidate_id=chosen.pk)

    corrected = expression_make(second, user, "the dog on the left, near the tree!")
    job_with_candidates(corrected)
    fixed = np.zeros((20, 24), dtype=bool)
    fixed[3:11, 2:9] = True
    fixed[15, 20] = True
    review_create(expression=corrected, decision="corrected", reviewer=user, rle=rle_from_mask(fixed))

    rejected = expression_make(first, user, "the cat")
    job_with_candidates(rejected)
    review_create(expression=rejected, decision="rejected", reviewer=user)

    unreviewed = expression_make(second, user, "the sky")
    job_with_candidates(unreviewed)

    band = np.zeros((30, 40), dtype=bool)
    band[10:20, :] = True
    return {
        "project": project,
        "images": (first, second),
        "accepted": accepted,
        "corrected": corrected,
        "rejected": rejected,
        "unreviewed": unreviewed,
        "expected": {accepted.pk: band, corrected.pk: fixed},
    }
