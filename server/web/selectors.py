"""Reads of the annotator's pages: review items and the reviewed masks that exports write.

Membership is checked through ``server.ris.selectors`` (a user reads only the projects they are a
member of); everything here starts from a project already obtained that way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import OuterRef, QuerySet, Subquery

from server.ris.errors import ObjectNotFound
from server.ris.models import Activity, Expression, Image, Project, Review, ReviewDecision, SegmentationJob
from server.ris.selectors import User, expression_get, image_get
from server.web.models import RefineRequest


@dataclass(frozen=True)
class ReviewedMask:
    """The current verdict of one expression whose mask is kept (accepted or corrected).

    ``rle`` is the COCO RLE of the ``image.height x image.width`` mask, ``counts`` as ``str``.
    """

    expression: Expression
    image: Image
    review: Review
    rle: dict[str, Any]


def _with_latest_ids(expressions: QuerySet[Expression]) -> QuerySet[Expression]:
    latest_job = SegmentationJob.objects.filter(expression=OuterRef("pk")).order_by("-created_at", "-id")
    latest_review = Review.objects.filter(expression=OuterRef("pk")).order_by("-created_at", "-id")
    return expressions.annotate(
        latest_job_id=Subquery(latest_job.values("id")[:1]),
        latest_review_id=Subquery(latest_review.values("id")[:1]),
    )


def review_items(*, project: Project) -> list[dict[str, Any]]:
    """Every expression of ``project`` in review order (image id, then expression id), as JSON-ready items.

    Each item: ``expression_id``, ``text``, ``image_id``, ``image_name``, ``width``, ``height``,
    ``job`` (``{id, state, progress, error, pipeline}`` of the latest job, or None), ``review``
    (``{id, decision, candidate, reviewer, created_at, rle}`` of the latest review, or None; ``rle`` is
    the corrected mask of a ``corrected`` review, else None) and ``ready`` (its job succeeded and it has
    no verdict yet: what the review loop offers first).
    """
    expressions = list(
        _with_latest_ids(Expression.objects.filter(image__project=project))
        .select_related("image")
        .order_by("image_id", "id")
    )
    jobs = SegmentationJob.objects.in_bulk([e.latest_job_id for e in expressions if e.latest_job_id])
    reviews = Review.objects.select_related("reviewer").in_bulk(
        [e.latest_review_id for e in expressions if e.latest_review_id]
    )
    items = []
    for expression in expressions:
        job = jobs.get(expression.latest_job_id)
        review = reviews.get(expression.latest_review_id)
        items.append(
            {
                "expression_id": expression.pk,
                "text": expression.text,
                "category": expression.category,
                "image_id": expression.image_id,
                "image_name": expression.image.original_name,
                "width": expression.image.width,
                "height": expression.image.height,
                "job": None
                if job is None
                else {
                    "id": job.pk,
                    "state": job.state,
                    "progress": job.progress,
                    "error": job.error,
                    "pipeline": job.pipeline,
                },
                "review": None
                if review is None
                else {
                    "id": review.pk,
                    "decision": review.decision,
                    "candidate": review.candidate_id,
                    "reviewer": review.reviewer.get_username() if review.reviewer else None,
                    "created_at": review.created_at.isoformat(),
                    "rle": review.corrected_rle if review.decision == ReviewDecision.CORRECTED else None,
                },
                "ready": review is None and job is not None and job.state == "succeeded",
            }
        )
    return items


def reviewed_masks(*, project: Project) -> list[ReviewedMask]:
    """Expressions of ``project`` whose latest review accepted a candidate or saved a corrected mask.

    Ordered by image id, then expression id. An accepted review whose candidate was deleted since is
    left out (there is no mask to export).
    """
    expressions = list(
        _with_latest_ids(Expression.objects.filter(image__project=project))
        .select_related("image")
        .order_by("image_id", "id")
    )
    reviews = Review.objects.select_related("candidate").in_bulk(
        [e.latest_review_id for e in expressions if e.latest_review_id]
    )
    kept = []
    for expression in expressions:
        review = reviews.get(expression.latest_review_id)
        if review is None:
            continue
        if review.decision == ReviewDecision.CORRECTED and review.corrected_rle:
            rle = review.corrected_rle
        elif review.decision == ReviewDecision.ACCEPTED and review.candidate is not None:
            rle = review.candidate.rle
        else:
            continue
        kept.append(ReviewedMask(expression=expression, image=expression.image, review=review, rle=dict(rle)))
    return kept


def image_neighbours(*, image: Image) -> tuple[int | None, int | None]:
    """Ids of the previous and next image of the same project (by id), for the image page's links."""
    siblings = Image.objects.filter(project_id=image.project_id)
    previous = siblings.filter(pk__lt=image.pk).order_by("-pk").values_list("pk", flat=True).first()
    following = siblings.filter(pk__gt=image.pk).order_by("pk").values_list("pk", flat=True).first()
    return previous, following


def refine_request_get(*, user: User, request_id: int) -> RefineRequest:
    """A refine request on an image of one of ``user``'s projects; ``ObjectNotFound`` otherwise."""
    request = RefineRequest.objects.select_related("image").filter(pk=request_id).first()
    if request is None:
        raise ObjectNotFound(f"There is no refine request {request_id}.")
    try:
        image_get(user=user, image_id=request.image_id)
    except ObjectNotFound:
        raise ObjectNotFound(f"There is no refine request {request_id}.") from None
    return request


def review_get(*, user: User, review_id: int) -> Review:
    """A review of an expression in one of ``user``'s projects; ``ObjectNotFound`` otherwise."""
    review = Review.objects.filter(pk=review_id).first()
    if review is None:
        raise ObjectNotFound(f"There is no review {review_id}.")
    try:
        expression_get(user=user, expression_id=review.expression_id)
    except ObjectNotFound:
        raise ObjectNotFound(f"There is no review {review_id}.") from None
    return review


def activity_list(*, expression: Expression) -> list[dict[str, Any]]:
    """The history of ``expression``, oldest first: ``{verb, words, actor, detail, review_id, created_at}``."""
    rows = Activity.objects.filter(expression=expression).select_related("actor").order_by("created_at", "id")
    return [
        {
            "verb": row.verb,
            "words": row.get_verb_display(),
            "actor": row.actor.get_username() if row.actor else None,
            "detail": row.detail,
            "review_id": row.review_id,
            "created_at": row.created_at.isoformat(),
        }
        for row in rows
    ]
