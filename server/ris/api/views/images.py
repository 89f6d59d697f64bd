"""One image: its record, its pixels scaled for the screen, its expressions (list and create)."""

from __future__ import annotations

from django.core.files.storage import default_storage
from django.http import FileResponse, HttpResponse, HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle, ScopedRateThrottle
from rest_framework.views import APIView

from server.ris import selectors, services
from server.ris.api.serializers import (
    ErrorOut,
    ExpressionCreateInput,
    ExpressionOut,
    ImageFileQueryInput,
    ImageOut,
)
from server.ris.api.views.jobs import with_queue_position

IMAGE_CACHE_SECONDS = 24 * 3600


class ImageDetailApi(APIView):
    @extend_schema(responses={200: ImageOut, 404: ErrorOut})
    def get(self, request: Request, image_id: int) -> Response:
        return Response(ImageOut(selectors.image_get(user=request.user, image_id=image_id)).data)


class ImageFileApi(APIView):
    """The image's pixels, EXIF orientation applied, scaled to fit ``max_side`` (cached in storage)."""

    @extend_schema(
        parameters=[OpenApiParameter("max_side", int, required=False, description="Longest side in pixels.")],
        responses={(200, "image/*"): OpenApiTypes.BINARY, 304: None, 400: ErrorOut, 404: ErrorOut},
    )
    def get(self, request: Request, image_id: int) -> HttpResponseBase:
        image = selectors.image_get(user=request.user, image_id=image_id)
        query = ImageFileQueryInput(data=request.query_params)
        query.is_valid(raise_exception=True)
        rendition = services.image_rendition(image=image, max_side=query.validated_data.get("max_side"))
        if request.headers.get("If-None-Match") == rendition.etag:
            response: HttpResponseBase = HttpResponse(status=status.HTTP_304_NOT_MODIFIED)
        else:
            response = FileResponse(
                default_storage.open(rendition.key, "rb"), content_type=rendition.content_type
            )
        response["ETag"] = rendition.etag
        response["Cache-Control"] = f"private, max-age={IMAGE_CACHE_SECONDS}"
        return response


class ImageExpressionsApi(APIView):
    """Expressions typed on an image, each with its latest job and review; POST adds one and its job."""

    throttle_scope = "job_create"

    def get_throttles(self) -> list[BaseThrottle]:
        return [ScopedRateThrottle()] if self.request.method == "POST" else []

    @extend_schema(responses={200: ExpressionOut(many=True), 404: ErrorOut})
    def get(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get(user=request.user, image_id=image_id)
        expressions = selectors.expression_list(user=request.user, image=image)
        for expression in expressions:
            with_queue_position(expression.latest_job, request.user)
        return Response(ExpressionOut(expressions, many=True).data)

    @extend_schema(
        request=ExpressionCreateInput, responses={201: ExpressionOut, 400: ErrorOut, 429: ErrorOut}
    )
    def post(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get(user=request.user, image_id=image_id)
        data = ExpressionCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        expression = services.expression_create(image=image, author=request.user, **data.validated_data)
        # A new expression has one job and no review: read the job alone, not the expression again (two
        # queries less per creation, the most frequent write).
        expression.latest_job = selectors.job_latest_for_expression(expression=expression)
        expression.latest_review = None
        with_queue_position(expression.latest_job, request.user)
        return Response(ExpressionOut(expression).data, status=status.HTTP_201_CREATED)
