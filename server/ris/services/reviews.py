"""Writes on reviews: accept a candidate, save a corrected mask, reject all candidates, or undo one.

Every decision and every undo also appends a line to the expression's ``Activity`` history.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from server.ris.errors import Conflict, InvalidInput
from server.ris.models import (
    Activity,
    ActivityVerb,
    Candidate,
    Expression,
    Review,
    ReviewDecision,
    SegmentationJob,
)
from server.ris.selectors import job_latest_for_expression
from server.ris.services.rle import rle_validate


def review_create(
    *,
    expression: Expression,
    decision: str,
    reviewer: AbstractBaseUser | None,
    candidate_id: int | None = None,
    rle: Any = None,
) -> Review:
    """Record a verdict on ``expression``.

    - ``accepted``: ``candidate_id`` names a candidate of the expression's latest job (an early one too,
      while the job runs: it is then kept beside the final ones); no ``rle``.
    - ``corrected``: ``rle`` is the corrected mask (COCO RLE of the whole image); ``candidate_id``
      optionally names the candidate it started from.
    - ``rejected``: neither.
    Raises ``InvalidInput`` with the reason for any other combination, a foreign candidate or bad RLE.
    """
    choices = [choice.value for choice in ReviewDecision]
    if decision not in choices:
        raise InvalidInput(f"decision must be one of {', '.join(choices)}; got {decision!r}.")
    candidate: Candidate | None = None
    if candidate_id is not None:
        latest = job_latest_for_expression(expression=expression)
        candidate = Candidate.objects.filter(pk=candidate_id, job=latest).first() if latest else None
        if candidate is None:
            raise InvalidInput(
                f"Candidate {candidate_id} is not one of the candidates of this expression's latest job."
            )
    corrected = None
    if decision == ReviewDecision.ACCEPTED:
        if candidate is None:
            raise InvalidInput("An accepted review needs the id of the candidate that is accepted.")
        if rle is not None:
            raise InvalidInput("An accepted review takes a candidate, not a mask; send decision 'corrected'.")
    elif decision == ReviewDecision.CORRECTED:
        if rle is None:
            raise InvalidInput("A corrected review needs the corrected mask as COCO RLE in 'rle'.")
        image = expression.image
        corrected = rle_validate(rle, height=image.height, width=image.width)
    elif candidate is not None or rle is not None:
        raise InvalidInput("A rejected review takes neither a candidate nor a mask.")
    with transaction.atomic():
        if candidate is not None and candidate.partial:
            # An early candidate may be replaced by the final ones at this moment: take the job's lock, as
            # job_succeed does, so either it keeps the chosen row or this review sees the row gone.
            SegmentationJob.objects.select_for_update().filter(pk=candidate.job_id).first()
            if not Candidate.objects.filter(pk=candidate.pk).exists():
                raise InvalidInput(
                    f"Candidate {candidate.pk} was an early candidate, replaced by the final ones just now; "
                    "choose again."
                )
        review = Review.objects.create(
            expression=expression,
            candidate=candidate,
            corrected_rle=corrected,
            decision=decision,
            reviewer=reviewer,
        )
        detail = f"candidate #{candidate.rank + 1}" if candidate is not None else ""
        Activity.objects.create(
            expression=expression, actor=reviewer, verb=decision, review_id=review.pk, detail=detail
        )
    return review


def review_undo(*, review: Review, user: AbstractBaseUser) -> Review | None:
    """Take back ``review``, the latest verdict on its expression, made by ``user``.

    The row is deleted (so every reader sees the verdict before it again) and an ``undone`` line is kept
    in the expression's activity. Returns the verdict now in force (or None). Raises ``Conflict`` when a
    newer review exists or another person made this one.
    """
    with transaction.atomic():
        latest = (
            Review.objects.select_for_update()
            .filter(expression_id=review.expression_id)
            .order_by("-created_at", "-id")
            .first()
        )
        if latest is None or latest.pk != review.pk:
            raise Conflict("Only the latest decision on an expression can be undone; a newer one exists.")
        if review.reviewer_id != user.pk:
            raise Conflict("Only the person who made a decision can undo it.")
        words = ReviewDecision(review.decision).label.lower()
        Activity.objects.create(
            expression_id=review.expression_id,
            actor=user,
            verb=ActivityVerb.UNDONE,
            review_id=review.pk,
            detail=f"undid {words}",
        )
        review.delete()
        return (
            Review.objects.filter(expression_id=latest.expression_id).order_by("-created_at", "-id").first()
        )
