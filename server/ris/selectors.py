"""Every read of the app: ``<entity>_list`` / ``<entity>_get``, with membership checked on each object.

A user sees the projects they are a member of (superusers see all). Asking for an image, expression or
job of any other project raises ``ObjectNotFound``, the same as for an id that does not exist, so ids
of other projects cannot be probed.

An image's status is derived in one annotated query, never stored:

- ``no_expression``: nobody typed an expression on it yet;
- ``queued``: some job of it is queued or running;
- ``needs_review``: no job is active and some expression has no review;
- ``done``: every expression has a review.
"""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Case, Exists, OuterRef, Q, QuerySet, Value, When
from django.utils import timezone

from server.ris.errors import InvalidInput, ObjectNotFound
from server.ris.models import (
    ACTIVE_JOB_STATES,
    Candidate,
    Expression,
    Image,
    JobState,
    Project,
    Review,
    SegmentationJob,
)

IMAGE_STATUSES = ("no_expression", "queued", "needs_review", "done")

User = AbstractBaseUser | AnonymousUser


def _project_ids_for(user: User) -> QuerySet | None:
    """Ids of the projects ``user`` may read, or None for every project (superusers)."""
    if getattr(user, "is_superuser", False) and user.is_active:
        return None
    if not user.is_authenticated or not user.is_active:
        return Project.objects.none().values("id")
    return Project.objects.filter(members=user).values("id")


def _visible(queryset: QuerySet, user: User, project_path: str) -> QuerySet:
    ids = _project_ids_for(user)
    return queryset if ids is None else queryset.filter(**{f"{project_path}__in": ids})


def queryset_visible(*, queryset: QuerySet, user: User, project_path: str) -> QuerySet:
    """Rows of ``queryset`` in projects ``user`` may read (``project_path``: the lookup to the project id)."""
    return _visible(queryset, user, project_path)


def project_list_for_user(*, user: User) -> QuerySet[Project]:
    return _visible(Project.objects.all(), user, "id").order_by("name", "id")


def project_get(*, user: User, project_id: int) -> Project:
    project = _visible(Project.objects.all(), user, "id").filter(pk=project_id).first()
    if project is None:
        raise ObjectNotFound(f"There is no project {project_id} among your projects.")
    return project


def image_queryset_with_status() -> QuerySet[Image]:
    """All images, each annotated with ``status`` (see the module docstring) and ``expression_count``."""
    has_expression = Exists(Expression.objects.filter(image=OuterRef("pk")))
    has_active_job = Exists(
        SegmentationJob.objects.filter(expression__image=OuterRef("pk"), state__in=ACTIVE_JOB_STATES)
    )
    has_unreviewed = Exists(
        Expression.objects.filter(image=OuterRef("pk")).exclude(
            Exists(Review.objects.filter(expression=OuterRef("pk")))
        )
    )
    return Image.objects.annotate(
        status=Case(
            When(~has_expression, then=Value("no_expression")),
            When(has_active_job, then=Value("queued")),
            When(has_unreviewed, then=Value("needs_review")),
            default=Value("done"),
        )
    )


def image_list(
    *, user: User, project: Project, status: str | None = None, q: str | None = None
) -> QuerySet[Image]:
    """Images of ``project`` (membership checked), filtered by status and by text in names/expressions."""
    project = project_get(user=user, project_id=project.pk)
    images = image_queryset_with_status().filter(project=project)
    if status:
        if status not in IMAGE_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(IMAGE_STATUSES)}; got {status!r}.")
        images = images.filter(status=status)
    if q and q.strip():
        text = q.strip()
        images = images.filter(
            Q(original_name__icontains=text)
            | Exists(Expression.objects.filter(image=OuterRef("pk"), text__icontains=text))
        )
    return images.order_by("id")


def image_get(*, user: User, image_id: int) -> Image:
    image = (
        _visible(image_queryset_with_status(), user, "project_id")
        .select_related("project")
        .filter(pk=image_id)
        .first()
    )
    if image is None:
        raise ObjectNotFound(f"There is no image {image_id} in your projects.")
    return image


def job_latest_for_expression(*, expression: Expression) -> SegmentationJob | None:
    return expression.jobs.order_by("-created_at", "-id").first()


def expression_list(*, user: User, image: Image) -> list[Expression]:
    """Expressions of ``image``, oldest first, each with ``latest_job`` and ``latest_review`` set."""
    image = image_get(user=user, image_id=image.pk)
    expressions = list(
        Expression.objects.filter(image=image)
        .select_related("author")
        .prefetch_related("jobs", "reviews__reviewer")
        .order_by("id")
    )
    for expression in expressions:
        _attach_latest(expression)
    return expressions


def expression_get(*, user: User, expression_id: int) -> Expression:
    expression = (
        _visible(Expression.objects.all(), user, "image__project_id")
        .select_related("image", "author")
        .filter(pk=expression_id)
        .first()
    )
    if expression is None:
        raise ObjectNotFound(f"There is no expression {expression_id} in your projects.")
    _attach_latest(expression)
    return expression


def _attach_latest(expression: Expression) -> None:
    jobs = sorted(expression.jobs.all(), key=lambda job: (job.created_at, job.pk))
    reviews = sorted(expression.reviews.all(), key=lambda review: (review.created_at, review.pk))
    expression.latest_job = jobs[-1] if jobs else None
    expression.latest_review = reviews[-1] if reviews else None


def job_get(*, user: User, job_id: int) -> SegmentationJob:
    job = (
        _visible(SegmentationJob.objects.all(), user, "expression__image__project_id")
        .select_related("expression__image")
        .filter(pk=job_id)
        .first()
    )
    if job is None:
        raise ObjectNotFound(f"There is no job {job_id} in your projects.")
    return job


def job_queue_position(*, job: SegmentationJob, user: User) -> int | None:
    """Jobs ahead of ``job`` in its lane that ``user`` may see; None once it is running or over.

    Counted: jobs of the same lane (``interactive`` / ``background``: each its own queue and workers)
    that are running, or queued and joined the lane before it (``enqueued_at``, then id: a Retry joins
    at the back), in projects ``user`` may read. Never counted: other lanes (their workers are others),
    finished or cancelled jobs, and jobs of projects ``user`` is not a member of (their count would
    tell about other people's work). 0 means next in line.
    """
    if job.state != JobState.QUEUED:
        return None
    ahead = SegmentationJob.objects.filter(lane=job.lane).filter(
        Q(state=JobState.RUNNING)
        | Q(state=JobState.QUEUED, enqueued_at__lt=job.enqueued_at)
        | Q(state=JobState.QUEUED, enqueued_at=job.enqueued_at, pk__lt=job.pk)
    )
    return _visible(ahead, user, "expression__image__project_id").exclude(pk=job.pk).count()


def job_recent_timings(*, job_id: int, n: int = 5) -> list[dict]:
    """``timings`` of the last ``n`` succeeded jobs of job ``job_id``'s pipeline (newest first), for estimates."""
    pipeline = SegmentationJob.objects.filter(pk=job_id).values_list("pipeline", flat=True).first()
    if pipeline is None:
        return []
    rows = (
        SegmentationJob.objects.filter(pipeline=pipeline, state=JobState.SUCCEEDED)
        .exclude(pk=job_id)
        .order_by("-finished_at")
        .values_list("timings", flat=True)[:n]
    )
    return [dict(row or {}) for row in rows]


def job_timing(*, job: SegmentationJob, now: datetime | None = None) -> dict[str, float | None]:
    """Seconds the job has waited or run so far, and an estimate of the seconds left (None: unknown).

    ``elapsed_s``: since it joined its lane while queued, since its claim while running, its run time
    once over. ``estimate_s``: the worker's own estimate (``stage["estimate_s"]``, made at its last
    report) less the seconds since that report; else, from progress p > 0.05, elapsed x (1 - p) / p.
    """
    now = now or timezone.now()
    if job.state == JobState.QUEUED:
        return {"elapsed_s": max(0.0, (now - job.enqueued_at).total_seconds()), "estimate_s": None}
    if job.state != JobState.RUNNING or job.started_at is None:
        end = job.finished_at or now
        start = job.started_at or job.enqueued_at
        return {"elapsed_s": max(0.0, (end - start).total_seconds()), "estimate_s": None}
    elapsed = max(0.0, (now - job.started_at).total_seconds())
    estimate: float | None = None
    stage = job.stage if isinstance(job.stage, dict) else {}
    reported = stage.get("estimate_s")
    if isinstance(reported, int | float) and job.heartbeat_at is not None:
        estimate = max(0.0, float(reported) - (now - job.heartbeat_at).total_seconds())
    elif job.progress > 0.05:
        estimate = elapsed * (1.0 - job.progress) / job.progress
    return {"elapsed_s": elapsed, "estimate_s": estimate}


def candidate_list(*, job: SegmentationJob) -> QuerySet[Candidate]:
    """The job's candidates: the final ones by rank, then the early ones (``partial``) by rank.

    While the job runs there are only early ones (if any yet); once it succeeded, only the early ones a
    review chose remain beside the final ones.
    """
    return Candidate.objects.filter(job=job).order_by("partial", "rank")


def job_has_partial_candidates(*, job: SegmentationJob) -> bool:
    """Whether the job runs and shows early candidates so far (better ones coming)."""
    return job.state == JobState.RUNNING and Candidate.objects.filter(job=job, partial=True).exists()


def review_list(*, expression: Expression) -> QuerySet[Review]:
    return Review.objects.filter(expression=expression).select_related("reviewer").order_by("id")


__all__ = [
    "IMAGE_STATUSES",
    "candidate_list",
    "job_has_partial_candidates",
    "expression_get",
    "expression_list",
    "image_get",
    "image_list",
    "image_queryset_with_status",
    "job_get",
    "job_latest_for_expression",
    "job_queue_position",
    "job_recent_timings",
    "job_timing",
    "project_get",
    "project_list_for_user",
    "queryset_visible",
    "review_list",
]
