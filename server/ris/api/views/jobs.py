"""Jobs (status, cancel, retry, bulk retry), their candidates, and reviews of expressions."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from server.ris import selectors, services
from server.ris.api.serializers import (
    CandidateOut,
    ErrorOut,
    JobOut,
    JobsRetryInput,
    ReviewCreateInput,
    ReviewOut,
)
from server.ris.models import SegmentationJob
from server.ris.selectors import User


def with_queue_position(job: SegmentationJob | None, user: User) -> SegmentationJob | None:
    """Set ``job.queue_position`` (as ``user`` may count it), ``elapsed_s``, ``estimate_s`` and ``partial``
    for ``JobOut``."""
    if job is not None:
        job.partial = selectors.job_has_partial_candidates(job=job)
        job.queue_position = selectors.job_queue_position(job=job, user=user)
        timing = selectors.job_timing(job=job)
        job.elapsed_s = timing["elapsed_s"]
        job.estimate_s = timing["estimate_s"]
    return job


class JobDetailApi(APIView):
    @extend_schema(responses={200: JobOut, 404: ErrorOut})
    def get(self, request: Request, job_id: int) -> Response:
        job = selectors.job_get(user=request.user, job_id=job_id)
        return Response(JobOut(with_queue_position(job, request.user)).data)


class JobCancelApi(APIView):
    @extend_schema(request=None, responses={200: JobOut, 404: ErrorOut, 409: ErrorOut})
    def post(self, request: Request, job_id: int) -> Response:
        job = services.job_cancel(job=selectors.job_get(user=request.user, job_id=job_id))
        return Response(JobOut(with_queue_position(job, request.user)).data)


class JobRetryApi(APIView):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "job_create"

    @extend_schema(request=None, responses={200: JobOut, 404: ErrorOut, 409: ErrorOut, 429: ErrorOut})
    def post(self, request: Request, job_id: int) -> Response:
        job = services.job_retry(job=selectors.job_get(user=request.user, job_id=job_id))
        return Response(JobOut(with_queue_position(job, request.user)).data)


class JobsRetryApi(APIView):
    """Retry many jobs at once (bulk): all go to the background lane; a single Retry is ``JobRetryApi``."""

    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "job_create"

    @extend_schema(
        operation_id="jobs_retry_bulk",
        request=JobsRetryInput,
        responses={200: JobOut(many=True), 400: ErrorOut, 404: ErrorOut, 409: ErrorOut, 429: ErrorOut},
    )
    def post(self, request: Request) -> Response:
        data = JobsRetryInput(data=request.data)
        data.is_valid(raise_exception=True)
        jobs = [selectors.job_get(user=request.user, job_id=pk) for pk in data.validated_data["jobs"]]
        retried = services.jobs_retry(jobs=jobs)
        return Response(JobOut([with_queue_position(job, request.user) for job in retried], many=True).data)


class JobCandidatesApi(APIView):
    """Ranked candidate masks of a job: early ones (``partial``) while it runs, the final ones once it
    succeeded (then any early one a review chose), none before."""

    @extend_schema(responses={200: CandidateOut(many=True), 404: ErrorOut})
    def get(self, request: Request, job_id: int) -> Response:
        job = selectors.job_get(user=request.user, job_id=job_id)
        return Response(CandidateOut(selectors.candidate_list(job=job), many=True).data)


class ExpressionReviewsApi(APIView):
    """Reviews of an expression, oldest first; POST appends one (the latest is the verdict)."""

    @extend_schema(responses={200: ReviewOut(many=True), 404: ErrorOut})
    def get(self, request: Request, expression_id: int) -> Response:
        expression = selectors.expression_get(user=request.user, expression_id=expression_id)
        return Response(ReviewOut(selectors.review_list(expression=expression), many=True).data)

    @extend_schema(request=ReviewCreateInput, responses={201: ReviewOut, 400: ErrorOut, 404: ErrorOut})
    def post(self, request: Request, expression_id: int) -> Response:
        expression = selectors.expression_get(user=request.user, expression_id=expression_id)
        data = ReviewCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        review = services.review_create(
            expression=expression,
            decision=data.validated_data["decision"],
            reviewer=request.user,
            candidate_id=data.validated_data.get("candidate"),
            rle=data.validated_data.get("rle"),
        )
        return Response(ReviewOut(review).data, status=status.HTTP_201_CREATED)
