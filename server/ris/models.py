"""Data of the annotation loop: Project -> Image -> Expression -> SegmentationJob -> Candidate, and Review.

Models hold data and invariants only; writes go through ``server.ris.services`` and reads through
``server.ris.selectors``. Masks are COCO RLE dicts (``{"size": [H, W], "counts": str}``) stored as
JSON; boxes are ``xyxy`` pixels of the EXIF-transposed image with exclusive ends.

An image's review status (no expression / queued / needs review / done) is not stored: the selector
``image_list`` derives it from expressions, jobs and reviews in one annotated query, so it can never
disagree with them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Project(models.Model):
    """A named collection of images shared by its members."""

    name = models.CharField(max_length=200)
    categories = models.JSONField(
        default=list,
        blank=True,
        help_text='Label names of the project, e.g. ["person", "car"]; exports use them.',
    )
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="ris_projects", blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="ris_projects_created"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class Image(models.Model):
    """One uploaded image, stored content-addressed under ``images/<aa>/<sha256>.<ext>``.

    ``width`` and ``height`` are those of the image as displayed, i.e. after its EXIF orientation is
    applied; masks and boxes use this frame.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="images")
    sha256 = models.CharField(max_length=64)
    storage_key = models.CharField(max_length=255, help_text="Key of the bytes in Django's default storage.")
    original_name = models.CharField(max_length=255)
    format = models.CharField(max_length=16, help_text="Pillow format name, e.g. JPEG, PNG.")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size_bytes = models.PositiveBigIntegerField()
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="ris_assigned_images",
        help_text="The annotator this image is assigned to (a project member), or nobody.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["project", "sha256"], name="ris_image_unique_sha256")]
        indexes = [models.Index(fields=["project", "created_at"], name="ris_image_project_created")]

    def __str__(self) -> str:
        return f"{self.original_name} ({self.width}x{self.height})"


class Expression(models.Model):
    """A referring expression typed on an image; each one is segmented by its own job."""

    MAX_LENGTH = 1000

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="expressions")
    text = models.CharField(max_length=MAX_LENGTH)
    category = models.CharField(max_length=100, blank=True, default="", help_text="Label; empty: 'object'.")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["image", "created_at"], name="ris_expr_image_created")]

    def __str__(self) -> str:
        return self.text[:80]


class JobState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)


class JobLane(models.TextChoices):
    """The lane (and broker queue, ``workers.lanes``) a job runs in."""

    INTERACTIVE = "interactive", "Interactive"
    BACKGROUND = "background", "Background"


class SegmentationJob(models.Model):
    """The database row is the truth about a job; a queue message carries only its id.

    ``config`` holds the pipeline overrides the user asked for; the worker replaces it with the full
    resolved config it ran with, so a finished job records exactly how its candidates were made.
    ``heartbeat_at`` moves on each claim and progress report: a running job whose heartbeat is older
    than ``RIS_JOB_STALE_SECONDS`` is taken to have lost its worker. ``dispatched_at`` is when its
    message was last handed to the broker; null means it never was (broker down at the time).
    ``lane`` is the queue it is sent to (interactive: typed on one image; background: bulk rows, retries
    of old jobs). ``enqueued_at`` is when it last joined its lane (creation, or a Retry): the queue
    position orders by it. ``stage`` is what the worker is doing now, for the page:
    ``{"name": "proposals", "done": 3, "total": 16, "unit": "point batches", "estimate_s": 12.5}``
    (``name`` one of ``loading``, ``waiting`` (for another worker's preparation of the image), ``proposals``,
    ``features``, ``scoring``, ``writing``, as ``workers/tasks/progress.py`` reports them; the other keys
    optional).
    """

    expression = models.ForeignKey(Expression, on_delete=models.CASCADE, related_name="jobs")
    pipeline = models.CharField(max_length=64)
    config = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED)
    progress = models.FloatField(default=0.0)
    stage = models.JSONField(default=dict, blank=True)
    lane = models.CharField(max_length=16, choices=JobLane.choices, default=JobLane.INTERACTIVE)
    error = models.TextField(blank=True, default="")
    timings = models.JSONField(default=dict, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=255, blank=True, default="")
    celery_task_id = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    enqueued_at = models.DateTimeField(default=timezone.now)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["state", "created_at"], name="ris_job_state_created"),
            models.Index(fields=["expression", "created_at"], name="ris_job_expr_created"),
            models.Index(fields=["lane", "state", "enqueued_at"], name="ris_job_lane_state_enq"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress__gte=0) & Q(progress__lte=1), name="ris_job_progress_0_1"
            )
        ]

    def __str__(self) -> str:
        return f"job {self.pk} {self.pipeline} {self.state}"

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_JOB_STATES


class Candidate(models.Model):
    """One ranked mask of a job (rank 0 is the best).

    ``partial``: an early candidate, ranked over a coarse point grid while the job still runs
    (``job_partial_candidates``); the job's final candidates replace the early ones when it succeeds,
    except an early one a review chose, which is kept (so the verdict keeps its mask). Ranks are unique
    per job among early and among final candidates.
    """

    job = models.ForeignKey(SegmentationJob, on_delete=models.CASCADE, related_name="candidates")
    rank = models.PositiveIntegerField()
    rle = models.JSONField(help_text='COCO RLE {"size": [H, W], "counts": str}')
    bbox_xyxy = models.JSONField(help_text="[x0, y0, x1, y1] pixels, exclusive ends")
    area = models.PositiveIntegerField()
    score = models.FloatField()
    components = models.JSONField(default=dict, blank=True)
    partial = models.BooleanField(default=False)

    class Meta:
        ordering = ["job", "partial", "rank"]
        constraints = [
            models.UniqueConstraint(fields=["job", "partial", "rank"], name="ris_candidate_unique_early_rank")
        ]

    def __str__(self) -> str:
        return f"candidate {self.rank} of job {self.job_id}"


class ReviewDecision(models.TextChoices):
    ACCEPTED = "accepted", "Accepted"
    CORRECTED = "corrected", "Corrected"
    REJECTED = "rejected", "Rejected"


class Review(models.Model):
    """A reviewer's verdict on an expression: a chosen candidate, a corrected mask, or a rejection.

    Reviews are appended, never edited; the latest one of an expression is its current verdict.
    """

    expression = models.ForeignKey(Expression, on_delete=models.CASCADE, related_name="reviews")
    candidate = models.ForeignKey(
        Candidate, on_delete=models.SET_NULL, null=True, blank=True, related_name="reviews"
    )
    corrected_rle = models.JSONField(null=True, blank=True)
    decision = models.CharField(max_length=16, choices=ReviewDecision.choices)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["expression", "created_at"], name="ris_review_expr_created")]

    def __str__(self) -> str:
        return f"{self.decision} on expression {self.expression_id}"


class ActivityVerb(models.TextChoices):
    ACCEPTED = "accepted", "Accepted"
    CORRECTED = "corrected", "Corrected"
    REJECTED = "rejected", "Rejected"
    UNDONE = "undone", "Undid a decision"
    APPROVED = "approved", "Approved"
    SENT_BACK = "sent_back", "Sent back"


class Activity(models.Model):
    """One line of an expression's history: who decided what, and when; kept when a review is undone.

    ``review_id`` is a plain number (not a key): the review an ``undone`` line names no longer exists.
    """

    expression = models.ForeignKey(Expression, on_delete=models.CASCADE, related_name="activity")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    verb = models.CharField(max_length=16, choices=ActivityVerb.choices)
    review_id = models.PositiveIntegerField(null=True, blank=True)
    detail = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["expression", "created_at"], name="ris_activity_expr_created")]

    def __str__(self) -> str:
        return f"{self.verb} on expression {self.expression_id}"


class CheckVerdict(models.TextChoices):
    APPROVED = "approved", "Approved"
    SENT_BACK = "sent_back", "Sent back"


class ReviewCheck(models.Model):
    """The review stage: a second person approves a review or sends it back for another look.

    Appended, never edited; the latest check of a review is its stage. A review sent back puts its
    expression back among the items to review.
    """

    review = models.ForeignKey(Review, on_delete=models.CASCADE, related_name="checks")
    checker = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    verdict = models.CharField(max_length=16, choices=CheckVerdict.choices)
    note = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.verdict} on review {self.review_id}"
