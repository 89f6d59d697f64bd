"""Click-to-refine requests of the review page.

A ``RefineRequest`` is one call of SAM's point / box prompt on an image: the browser posts the clicks,
a worker on the ``interactive`` lane answers with a COCO RLE mask, the browser polls for it. The row is the
truth (as for segmentation jobs): the queue message carries only its id, and the result stays here so
a reload or a slow model call loses nothing. A request still queued when a newer one arrives for the same
image (and expression) is ``superseded``: the worker skips it, and the newer one is answered instead.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class RefineState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SUPERSEDED = "superseded", "Superseded by a newer click"


class RefineRequest(models.Model):
    """SAM prompts on one image and, once answered, the refined mask.

    ``points_xy`` are ``[[x, y], ...]`` pixels of the EXIF-transposed image, ``labels`` 1 (add) or 0
    (remove) per point, ``box_xyxy`` an optional ``[x0, y0, x1, y1]`` box, ``mask_rle`` an optional
    COCO RLE of the mask being corrected; ``result_rle`` the answer (``{"size": [H, W], "counts": str}``).
    ``attempts``, ``worker``, ``celery_task_id``, ``dispatched_at``, ``heartbeat_at``: the bookkeeping every
    kind of work keeps (``server.ris.services.work``): attempts counted at each claim, the message that
    claimed it, when it was last sent and when its worker last reported.
    """

    image = models.ForeignKey("ris.Image", on_delete=models.CASCADE, related_name="refine_requests")
    expression = models.ForeignKey(
        "ris.Expression", on_delete=models.SET_NULL, null=True, blank=True, related_name="refine_requests"
    )
    candidate = models.ForeignKey(
        "ris.Candidate", on_delete=models.SET_NULL, null=True, blank=True, related_name="refine_requests"
    )
    points_xy = models.JSONField(default=list)
    labels = models.JSONField(default=list)
    box_xyxy = models.JSONField(null=True, blank=True)
    mask_rle = models.JSONField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=RefineState.choices, default=RefineState.QUEUED)
    result_rle = models.JSONField(null=True, blank=True)
    result_area = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    seconds = models.FloatField(null=True, blank=True, help_text="Model time of the refine call.")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    attempts = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=255, blank=True, default="")
    celery_task_id = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["state", "created_at"], name="web_refine_state_created")]

    def __str__(self) -> str:
        return f"refine {self.pk} on image {self.image_id} ({self.state})"
