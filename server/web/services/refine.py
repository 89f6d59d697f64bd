"""Click-to-refine: SAM point / box prompts on an image, answered by a worker of the ``interactive`` lane.

``refine_request_create`` checks the prompts and stores the request; the task
``workers.web_tasks.refine_mask`` is sent by name when the transaction commits (the web process never
imports the engine). A request lives by the rules of every kind of work (``server.ris.services.work``):
the worker claims it (queued; or running, on a redelivery of the message that claimed it or once its
heartbeat is stale), beats while SAM works, and stores the answer with ``refine_request_succeed`` or the
reason in words with ``refine_request_fail``; the reconciler sends again a request whose message or
worker was lost (``refine_requests_reconcile``).

Clicks on one image are answered in order (the interactive lane is one queue, delivered in order), and a
newer click supersedes an older one still queued: a new request for the same image, expression and person
marks their queued requests ``superseded``, and a worker skips a request that is no longer queued, so
only the newest clicks cost model time.

A refine is interactive, so on top of that a request not answered within ``RIS_REFINE_STALE_SECONDS`` is
ended with a message saying what happened (``refine_requests_expire``): still queued behind N items of the
interactive lane (or no interactive worker took anything meanwhile), the worker that had it gone (no
heartbeat), or the worker still on it. The page shows it and one more click asks again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from server.ris.errors import InvalidInput
from server.ris.models import Candidate, Expression, Image, JobLane, JobState, SegmentationJob
from server.ris.selectors import queryset_visible
from server.ris.services.dispatch import REFINE_MASK
from server.ris.services.rle import rle_area, rle_validate
from server.ris.services.work import (
    WorkKind,
    work_claim,
    work_dispatch,
    work_fail,
    work_heartbeat,
    work_reconcile,
    work_running,
)
from server.web.models import RefineRequest, RefineState

REFINE_TASK = REFINE_MASK
MAX_POINTS = 64
ERROR_MAX_CHARS = 2000


def refine_stale_seconds() -> float:
    """Seconds without a heartbeat after which a running refine lost its worker.

    Half of ``RIS_REFINE_STALE_SECONDS`` (so a request whose worker vanished is run once more before it
    expires), never more than ``RIS_JOB_STALE_SECONDS``.
    """
    return max(1.0, min(float(settings.RIS_JOB_STALE_SECONDS), float(settings.RIS_REFINE_STALE_SECONDS) / 2))


def _words_given_up(request: RefineRequest) -> str:
    return (
        f"SAM could not refine the mask: the worker stopped responding {request.attempts} times "
        f"(no heartbeat for {refine_stale_seconds():.0f} s). Click again to retry."
    )


REFINE_WORK = WorkKind(
    label="refine request",
    model=RefineRequest,
    task_name=REFINE_MASK,
    stale_seconds=refine_stale_seconds,
    words_given_up=_words_given_up,
    related=("image",),
    resets={"error": ""},
)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number; got {value!r}.")
    return float(value)


def refine_prompts_check(
    *,
    image: Image,
    points_xy: Any,
    labels: Any,
    box_xyxy: Any = None,
    mask_rle: Any = None,
) -> tuple[list[list[float]], list[int], list[float] | None, dict[str, Any] | None]:
    """Validate SAM prompts against ``image`` (pixels of the upright image) and return them cleaned.

    Points must lie on the image; labels are 1 (add) or 0 (remove), one per point; at least one point
    or a box is needed.
    """
    if points_xy is None:
        points_xy = []
    if labels is None:
        labels = []
    if not isinstance(points_xy, list) or not isinstance(labels, list):
        raise InvalidInput("points_xy and labels must be lists.")
    if len(points_xy) != len(labels):
        raise InvalidInput(
            f"There are {len(points_xy)} points but {len(labels)} labels; give one label per point."
        )
    if len(points_xy) > MAX_POINTS:
        raise InvalidInput(f"At most {MAX_POINTS} clicks per refine; got {len(points_xy)}.")
    points: list[list[float]] = []
    for index, point in enumerate(points_xy):
        if not isinstance(point, list | tuple) or len(point) != 2:
            raise InvalidInput(f"Point {index} must be [x, y]; got {point!r}.")
        x = _number(point[0], f"x of point {index}")
        y = _number(point[1], f"y of point {index}")
        if not (0 <= x <= image.width and 0 <= y <= image.height):
            raise InvalidInput(
                f"Point {index} ({x:.1f}, {y:.1f}) lies outside the {image.width}x{image.height} image."
            )
        points.append([x, y])
    clean_labels: list[int] = []
    for index, label in enumerate(labels):
        if label not in (0, 1) or isinstance(label, bool):
            raise InvalidInput(f"Label {index} must be 1 (add) or 0 (remove); got {label!r}.")
        clean_labels.append(int(label))
    box: list[float] | None = None
    if box_xyxy is not None:
        if not isinstance(box_xyxy, list | tuple) or len(box_xyxy) != 4:
            raise InvalidInput(f"box_xyxy must be [x0, y0, x1, y1]; got {box_xyxy!r}.")
        box = [_number(v, "box_xyxy") for v in box_xyxy]
        if not (box[0] < box[2] and box[1] < box[3]):
            raise InvalidInput(f"box_xyxy {box} is empty: x0 < x1 and y0 < y1 are needed.")
    if not points and box is None:
        raise InvalidInput("A refine needs at least one click or a box.")
    mask = None
    if mask_rle is not None:
        mask = rle_validate(mask_rle, height=image.height, width=image.width, field="mask_rle")
    return points, clean_labels, box, mask


def refine_request_create(
    *,
    image: Image,
    requested_by: AbstractBaseUser | None,
    points_xy: Sequence[Sequence[float]] | None,
    labels: Sequence[int] | None,
    box_xyxy: Sequence[float] | None = None,
    mask_rle: dict[str, Any] | None = None,
    expression: Expression | None = None,
    candidate_id: int | None = None,
) -> RefineRequest:
    """Store a refine request on ``image`` and send it to a worker when the transaction commits.

    ``expression`` must be on ``image``; ``candidate_id`` (the candidate being corrected) must belong
    to a job of ``expression``.
    """
    points, labels_clean, box, mask = refine_prompts_check(
        image=image, points_xy=points_xy, labels=labels, box_xyxy=box_xyxy, mask_rle=mask_rle
    )
    if expression is not None and expression.image_id != image.pk:
        raise InvalidInput(f"Expression {expression.pk} is not on image {image.pk}.")
    candidate = None
    if candidate_id is not None:
        if expression is None:
            raise InvalidInput("A candidate can only be named together with its expression.")
        candidate = Candidate.objects.filter(pk=candidate_id, job__expression=expression).first()
        if candidate is None:
            raise InvalidInput(f"Candidate {candidate_id} is not a candidate of expression {expression.pk}.")
    with transaction.atomic():
        refine_requests_supersede(
            image=image, expression=expression, requested_by=requested_by, now=timezone.now()
        )
        request = RefineRequest.objects.create(
            image=image,
            expression=expression,
            candidate=candidate,
            points_xy=points,
            labels=labels_clean,
            box_xyxy=box,
            mask_rle=mask,
            requested_by=requested_by,
        )
        request_id = request.pk
        transaction.on_commit(lambda: refine_request_dispatch(request_id=request_id))
    return request


def refine_requests_supersede(
    *, image: Image, expression: Expression | None, requested_by: AbstractBaseUser | None, now: datetime
) -> int:
    """Mark the queued requests of ``requested_by`` on ``image`` (and ``expression``) superseded.

    Called as a newer request for them is stored: the worker then skips the older ones (their claim
    finds them no longer queued). A running one is left to finish. Returns how many were superseded.
    """
    older = RefineRequest.objects.filter(
        image=image,
        expression=expression,
        state=RefineState.QUEUED,
        requested_by_id=getattr(requested_by, "pk", None),
    )
    return older.update(
        state=RefineState.SUPERSEDED, error="A newer click on this image replaced it.", finished_at=now
    )


def refine_request_dispatch(*, request_id: int) -> bool:
    """Send the request's message now and record when; False if the broker refused (reconciled later)."""
    return work_dispatch(REFINE_WORK, pk=request_id)


def refine_request_claim(*, request_id: int, worker: str = "", task_id: str = "") -> RefineRequest | None:
    """Mark the request running for ``worker`` and count the attempt; None if it is not this worker's to run.

    The claim rule of all work (``work_claim``): queued, or running on a redelivery of the message that
    claimed it (``task_id``), or running with a stale heartbeat. Returns the request with its image loaded.
    """
    return work_claim(REFINE_WORK, pk=request_id, worker=worker, task_id=task_id)


def refine_request_heartbeat(*, request_id: int, attempt: int | None = None) -> bool:
    """Record a heartbeat; False if the request is no longer running (under ``attempt`` when given)."""
    return work_heartbeat(REFINE_WORK, pk=request_id, attempt=attempt)


def refine_request_succeed(
    *, request_id: int, rle: dict[str, Any], seconds: float | None = None, attempt: int | None = None
) -> bool:
    """Store the refined mask (validated against the image's size) and mark the request succeeded.

    Returns False, writing nothing, when the request is no longer running (expired, or answered by
    another delivery), or, with ``attempt``, running under another attempt. Raises ``InvalidInput`` when
    the mask does not fit the image.
    """
    with transaction.atomic():
        request = work_running(REFINE_WORK, pk=request_id, attempt=attempt).select_for_update().first()
        if request is None:
            return False
        image = request.image
        clean = rle_validate(rle, height=image.height, width=image.width, field="refined mask")
        request.result_rle = clean
        request.result_area = rle_area(clean)
        request.state = RefineState.SUCCEEDED
        request.error = ""
        request.seconds = seconds
        request.finished_at = timezone.now()
        request.save(update_fields=["result_rle", "result_area", "state", "error", "seconds", "finished_at"])
    return True


def refine_request_fail(*, request_id: int, error: str, attempt: int | None = None) -> bool:
    """Mark the request failed with the reason in words; False if it had already ended (or, with
    ``attempt``, is running under another attempt)."""
    return work_fail(REFINE_WORK, pk=request_id, error=error[:ERROR_MAX_CHARS], attempt=attempt)


def refine_request_json(request: RefineRequest) -> dict[str, Any]:
    """What the review page polls: state, and the mask once there, or the error."""
    return {
        "id": request.pk,
        "state": request.state,
        "image": request.image_id,
        "expression": request.expression_id,
        "candidate": request.candidate_id,
        "points_xy": request.points_xy,
        "labels": request.labels,
        "rle": request.result_rle,
        "area": request.result_area,
        "error": request.error,
        "seconds": request.seconds,
    }


def refine_requests_expire(*, now: datetime | None = None, stale_seconds: int | None = None) -> list[int]:
    """Fail refine requests not answered within ``stale_seconds`` (default ``RIS_REFINE_STALE_SECONDS``).

    A click-to-refine is interactive: a page polling a request that never ends hangs the annotator. So the
    periodic reconciler ends such requests with what happened in words (no worker picked the request up;
    or the worker that had it stopped responding); the page shows it, and the correction in progress
    (kept in the browser) is untouched, so one more click retries. Returns the failed ids.
    """
    now = now or timezone.now()
    stale = stale_seconds if stale_seconds is not None else int(settings.RIS_REFINE_STALE_SECONDS)
    old = RefineRequest.objects.filter(
        state__in=[RefineState.QUEUED, RefineState.RUNNING], created_at__lt=now - timedelta(seconds=stale)
    ).select_related("requested_by")
    expired: list[int] = []
    for request in old:
        message = refine_expiry_words(request=request, stale=stale, now=now)
        if RefineRequest.objects.filter(
            pk=request.pk, state__in=[RefineState.QUEUED, RefineState.RUNNING]
        ).update(state=RefineState.FAILED, error=message, finished_at=now):
            expired.append(request.pk)
    return sorted(expired)


def refine_expiry_words(*, request: RefineRequest, stale: int, now: datetime) -> str:
    """What happened to ``request``, not answered within ``stale`` seconds, in words for the page.

    Queued: how many items of the interactive lane were ahead of it (refine requests and interactive
    jobs, running or queued before it, in projects its requester may read), or that no interactive
    worker started anything for ``stale`` s. Running: the worker gone (no heartbeat for the stale time),
    or still on it (its last heartbeat).
    """
    lead = f"The model did not answer within {stale} s: "
    retry = " Click again to retry."
    if request.state == RefineState.RUNNING:
        beat = request.heartbeat_at or request.started_at or request.created_at
        silent = (now - beat).total_seconds()
        if silent >= refine_stale_seconds():
            return (
                f"{lead}the worker refining it ({request.worker or 'unnamed'}) is gone: no heartbeat for "
                f"{silent:.0f} s.{retry}"
            )
        return (
            f"{lead}the worker {request.worker or ''} is still on it (last heartbeat {silent:.0f} s ago); SAM "
            f"is slower than this on this machine.{retry}"
        )
    user = request.requested_by
    visible_refines = RefineRequest.objects.filter(
        Q(state=RefineState.RUNNING) | Q(state=RefineState.QUEUED, created_at__lt=request.created_at)
    ).exclude(pk=request.pk)
    jobs = SegmentationJob.objects.filter(lane=JobLane.INTERACTIVE).filter(
        Q(state=JobState.RUNNING) | Q(state=JobState.QUEUED, enqueued_at__lt=request.created_at)
    )
    if user is not None:
        visible_refines = queryset_visible(
            queryset=visible_refines, user=user, project_path="image__project_id"
        )
        jobs = queryset_visible(queryset=jobs, user=user, project_path="expression__image__project_id")
    ahead = visible_refines.count() + jobs.count()
    since = now - timedelta(seconds=stale)
    started_lately = (
        RefineRequest.objects.filter(started_at__gte=since).exists()
        or SegmentationJob.objects.filter(lane=JobLane.INTERACTIVE, started_at__gte=since).exists()
    )
    if not started_lately:
        return (
            f"{lead}it is still queued, and no interactive worker started anything in that time (is the "
            f"interactive worker running? `make run` starts one).{retry}"
        )
    return (
        f"{lead}it is still queued behind {ahead} item{'s' if ahead != 1 else ''} of the interactive lane "
        f"(clicks and expressions typed on one image, yours and your projects').{retry}"
    )


@dataclass
class RefineReconcileReport:
    """What one reconciler pass did to refine requests: sent again, failed after lost workers, expired."""

    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)


def refine_requests_reconcile(*, now: datetime | None = None) -> RefineReconcileReport:
    """Expire requests not answered in time, then send again those whose message or worker was lost."""
    expired = refine_requests_expire(now=now)
    report = work_reconcile(REFINE_WORK, now=now)
    return RefineReconcileReport(requeued=report.requeued, failed=report.failed, expired=expired)
