"""Projects, their members, and the images of a project (list and upload)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from server.ris import selectors, services
from server.ris.api.errors import error_response
from server.ris.api.serializers import (
    ErrorOut,
    ImageListFilterInput,
    ImageOut,
    ImageUploadInput,
    ImageUploadOut,
    ProjectCreateInput,
    ProjectMemberAddInput,
    ProjectOut,
)


class ProjectListCreateApi(APIView):
    @extend_schema(responses={200: ProjectOut(many=True)})
    def get(self, request: Request) -> Response:
        projects = selectors.project_list_for_user(user=request.user).prefetch_related("members")
        return Response(ProjectOut(projects.select_related("created_by"), many=True).data)

    @extend_schema(request=ProjectCreateInput, responses={201: ProjectOut, 400: ErrorOut})
    def post(self, request: Request) -> Response:
        data = ProjectCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        project = services.project_create(name=data.validated_data["name"], created_by=request.user)
        return Response(ProjectOut(project).data, status=status.HTTP_201_CREATED)


class ProjectDetailApi(APIView):
    @extend_schema(responses={200: ProjectOut, 404: ErrorOut})
    def get(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get(user=request.user, project_id=project_id)
        return Response(ProjectOut(project).data)


class ProjectMemberAddApi(APIView):
    """Add a user (by username) to a project you are a member of."""

    @extend_schema(request=ProjectMemberAddInput, responses={200: ProjectOut, 404: ErrorOut})
    def post(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get(user=request.user, project_id=project_id)
        data = ProjectMemberAddInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.project_member_add(project=project, username=data.validated_data["username"])
        return Response(ProjectOut(project).data)


class ProjectImagesApi(APIView):
    """List a project's images (filter by status, search names and expressions) or upload more."""

    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=list(selectors.IMAGE_STATUSES), required=False),
            OpenApiParameter("q", str, required=False, description="Text in the file name or an expression."),
        ],
        responses={200: ImageOut(many=True), 404: ErrorOut},
    )
    def get(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get(user=request.user, project_id=project_id)
        filters = ImageListFilterInput(data=request.query_params)
        filters.is_valid(raise_exception=True)
        images = selectors.image_list(user=request.user, project=project, **filters.validated_data)
        return Response(ImageOut(images, many=True).data)

    @extend_schema(
        request={"multipart/form-data": ImageUploadInput},
        responses={201: ImageUploadOut, 400: ImageUploadOut, 404: ErrorOut},
        description="Stores each acceptable file; each refused file or archive member is listed with its "
        "reason. 400 when nothing could be stored.",
    )
    def post(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get(user=request.user, project_id=project_id)
        files = request.FILES.getlist("files")
        if not files:
            return error_response("No files were sent; put one or more images in the 'files' field.", 400)
        stored, rejected = services.image_upload(project=project, files=files, uploaded_by=request.user)
        annotated = {
            image.pk: image
            for image in selectors.image_queryset_with_status().filter(
                pk__in=[item.image.pk for item in stored]
            )
        }
        images = []
        for item in stored:
            image = annotated[item.image.pk]
            image.duplicate = item.duplicate
            images.append(image)
        body = ImageUploadOut(
            {"images": images, "rejected": [{"name": r.name, "error": r.error} for r in rejected]}
        ).data
        if not images:
            reason = rejected[0].error if rejected else "the upload held no image"
            body = {"error": "No file could be stored: " + reason, "details": {}, **body}
            return Response(body, status=status.HTTP_400_BAD_REQUEST)
        return Response(body, status=status.HTTP_201_CREATED)
