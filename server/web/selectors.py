"""Reads of the annotator's pages: review items and the reviewed masks that exports write.

Membership is checked through ``server.ris.selectors`` (a user reads only the projects they are a
member of); everything here starts from a project already obtained that way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from server.ris.errors import ObjectNotFound
from server.ris.models import (
    Activity,
    CheckVerdict,
    Expression,
    Image,
    JobLane,
    JobState,
    Project,
    Review,
    ReviewCheck,
    ReviewDecision,
    SegmentationJob,
)
from server.ris.selectors import User, expression_get, image_get
from server.web.models import RefineRequest, RefineState


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


def review_items(*, project: Project, assignee: User | None = None) -> list[dict[str, Any]]:
    """Every expression of ``project`` in review order (image id, then expression id), as JSON-ready items.

    Each item: ``expression_id``, ``text``, ``image_id``, ``image_name``, ``width``, ``height``,
    ``job`` (``{id, state, progress, error, pipeline}`` of the latest job, or None), ``review``
    (``{id, decision, candidate, reviewer, created_at, rle}`` of the latest review, or None; ``rle`` is
    the corrected mask of a ``corrected`` review, else None) and ``ready`` (its job succeeded and it has
    no verdict yet, or its verdict was sent back: what the review loop offers first), ``assignee`` (the
    image's annotator's username or None) and ``check`` (``{verdict, checker, note}`` of the latest
    review-stage check of the verdict, or None). With ``assignee``, only the items of images assigned
    to that user.
    """
    queryset = Expression.objects.filter(image__project=project)
    if assignee is not None:
        queryset = queryset.filter(image__assignee=assignee)
    expressions = list(
        _with_latest_ids(queryset).select_related("image", "image__assignee").order_by("image_id", "id")
    )
    jobs = SegmentationJob.objects.in_bulk([e.latest_job_id for e in expressions if e.latest_job_id])
    reviews = Review.objects.select_related("reviewer").in_bulk(
        [e.latest_review_id for e in expressions if e.latest_review_id]
    )
    checks: dict[int, ReviewCheck] = {}
    for check in (
        ReviewCheck.objects.filter(review_id__in=list(reviews)).select_related("checker").order_by("id")
    ):
        checks[check.review_id] = check  # the latest wins
    items = []
    for expression in expressions:
        job = jobs.get(expression.latest_job_id)
        review = reviews.get(expression.latest_review_id)
        check = checks.get(review.pk) if review is not None else None
        sent_back = check is not None and check.verdict == CheckVerdict.SENT_BACK
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
                "ready": (review is None or sent_back) and job is not None and job.state == "succeeded",
                "assignee": expression.image.assignee.get_username() if expression.image.assignee else None,
                "check": None
                if check is None
                else {
                    "verdict": check.verdict,
                    "checker": check.checker.get_username() if check.checker else None,
                    "note": check.note,
                },
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


def team_progress(*, project: Project) -> list[dict[str, Any]]:
    """Per member of ``project`` (and its creator), by username: ``assigned_images``, ``expressions`` on
    them, ``decided`` (current verdicts they made), ``approved`` / ``sent_back`` (their verdicts whose
    latest check says so) and ``checks`` (review-stage checks they made)."""
    from django.contrib.auth import get_user_model

    members = {project.created_by_id, *project.members.values_list("pk", flat=True)}
    users = get_user_model().objects.filter(pk__in=members).order_by("username")
    expressions = list(
        _with_latest_ids(Expression.objects.filter(image__project=project)).select_related("image")
    )
    latest = Review.objects.in_bulk([e.latest_review_id for e in expressions if e.latest_review_id])
    stage: dict[int, str] = {}
    for check in ReviewCheck.objects.filter(review_id__in=list(latest)).order_by("id"):
        stage[check.review_id] = check.verdict
    rows = []
    for user in users:
        mine = [e for e in expressions if e.image.assignee_id == user.pk]
        verdicts = [r for r in latest.values() if r.reviewer_id == user.pk]
        rows.append(
            {
                "username": user.get_username(),
                "assigned_images": Image.objects.filter(project=project, assignee=user).count(),
                "expressions": len(mine),
                "decided": len(verdicts),
                "approved": sum(stage.get(r.pk) == CheckVerdict.APPROVED for r in verdicts),
                "sent_back": sum(stage.get(r.pk) == CheckVerdict.SENT_BACK for r in verdicts),
                "checks": ReviewCheck.objects.filter(
                    review__expression__image__project=project, checker=user
                ).count(),
            }
        )
    return rows


def interactive_work_running(*, now: datetime | None = None) -> bool:
    """True while someone waits at the screen on a worker: an interactive-lane job or a refine request is
    running, with a live heartbeat (newer than ``RIS_JOB_STALE_SECONDS`` for a job,
    ``RIS_REFINE_STALE_SECONDS`` for a refine), in any project.

    Background work (``workers.tasks.yielding``) asks this between its units of work, at most every
    ``RIS_BACKGROUND_YIELD_POLL_S``: two ``EXISTS`` queries on indexed columns (a job's lane and state, a
    refine's state), a millisecond on an idle database. A row whose worker died stops counting once its
    heartbeat is stale. A job in stage ``waiting`` does not count: it waits for a background worker's
    preparation of its image (``workers.engine.core.inflight``), which must not pause for it.
    """
    now = now or timezone.now()
    job_since = now - timedelta(seconds=float(settings.RIS_JOB_STALE_SECONDS))
    refine_since = now - timedelta(seconds=float(settings.RIS_REFINE_STALE_SECONDS))
    return (
        SegmentationJob.objects.filter(
            lane=JobLane.INTERACTIVE, state=JobState.RUNNING, heartbeat_at__gte=job_since
        )
        # A key lookup that every backend has (JSON ``contains`` is not on SQLite); ``has_key`` keeps rows
        # with no stage name (a NULL comparison inside a negation would drop them).
        .exclude(Q(stage__has_key="name") & Q(stage__name="waiting"))
        .exists()
        or RefineRequest.objects.filter(state=RefineState.RUNNING, heartbeat_at__gte=refine_since).exists()
    )
