"""Thin views of the annotator: pages render a shell that the JS modules fill from the JSON API; the
few web-only endpoints (review items, bulk expressions, exports, click-to-refine) call one selector or
service each. Every view needs a signed-in user, and every object is read through the membership
checks of ``server.ris.selectors``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.text import slugify
from rest_framework import status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from server.ris.api.parsers import BoundedJSONParser
from server.ris.errors import InvalidInput, ObjectNotFound
from server.ris.models import Image
from server.ris.selectors import expression_get, image_get, project_get, project_list_for_user
from server.ris.services.reviews import review_undo
from server.web.selectors import (
    activity_list,
    image_neighbours,
    refine_request_get,
    review_get,
    review_items,
    team_progress,
)
from server.web.services.bulk import bulk_config_parse, expressions_bulk_create
from server.web.services.export import coco_export, refer_export_zip
from server.web.services.formats import (
    coco_import,
    coco_polygons_export,
    label_studio_export,
    png_masks_zip,
    yolo_zip,
)
from server.web.services.labels import expression_category_set, project_categories_set
from server.web.services.refine import refine_request_create, refine_request_json
from server.web.services.team import images_assign, review_check


def _project_or_404(request: HttpRequest, project_id: int):
    try:
        return project_get(user=request.user, project_id=project_id)
    except ObjectNotFound as error:
        raise Http404(error.message) from None


# ---------------------------------------------------------------------------------------------- pages


@login_required
def project_list_page(request: HttpRequest) -> HttpResponse:
    from django.db.models import Count

    projects = project_list_for_user(user=request.user).annotate(
        image_count=Count("images", distinct=True), member_count=Count("members", distinct=True)
    )
    return render(request, "web/project_list.html", {"projects": projects})


@login_required
def project_detail_page(request: HttpRequest, project_id: int) -> HttpResponse:
    project = _project_or_404(request, project_id)
    members = project.members.order_by("username")
    return render(
        request,
        "web/project_detail.html",
        {"project": project, "members": members, "team": team_progress(project=project)},
    )


@login_required
def upload_page(request: HttpRequest, project_id: int) -> HttpResponse:
    project = _project_or_404(request, project_id)
    return render(
        request, "web/upload.html", {"project": project, "max_upload_bytes": settings.RIS_MAX_UPLOAD_BYTES}
    )


@login_required
def image_detail_page(request: HttpRequest, image_id: int) -> HttpResponse:
    try:
        image: Image = image_get(user=request.user, image_id=image_id)
    except ObjectNotFound as error:
        raise Http404(error.message) from None
    previous, following = image_neighbours(image=image)
    return render(
        request,
        "web/image_detail.html",
        {"image": image, "project": image.project, "prev_id": previous, "next_id": following},
    )


@login_required
def review_page(request: HttpRequest, project_id: int) -> HttpResponse:
    project = _project_or_404(request, project_id)
    context: dict[str, Any] = {"project": project, "categories": list(project.categories or [])}
    for key, name in (("expression", "start_expression"), ("image", "start_image")):
        value = request.GET.get(key, "")
        # ASCII digits only: str.isdigit() is also true of "²" and "٣", which int() refuses or reads.
        context[name] = int(value) if value.isascii() and value.isdigit() and len(value) < 19 else ""
    return render(request, "web/review.html", context)


@login_required
def shortcuts_page(request: HttpRequest) -> HttpResponse:
    return render(request, "web/shortcuts.html")


@login_required
def pipelines_page(request: HttpRequest) -> HttpResponse:
    """Every pipeline, what it needs (models, GPU or CPU), and whether its models are in the store."""
    from server.ris.pipeline_selectors import pipeline_list

    engine = settings.RIS_ENGINE
    pipelines = pipeline_list(profile=engine.profile, model_dir=engine.model_dir, device=engine.device)
    return render(request, "web/pipelines.html", {"pipelines": pipelines, "profile": engine.profile})


# ------------------------------------------------------------------------------------------ endpoints


class ReviewItemsApi(APIView):
    """GET: every expression of the project in review order, with its latest job and review."""

    schema = None  # page-support endpoint: not part of the public API schema

    def get(self, request: Request, project_id: int) -> Response:
        project = project_get(user=request.user, project_id=project_id)
        mine = request.query_params.get("mine") in ("1", "true")
        return Response({"items": review_items(project=project, assignee=request.user if mine else None)})


class ReviewUndoApi(APIView):
    """POST: take back a review (the latest on its expression, made by this user); answers the verdict now."""

    schema = None  # page-support endpoint: not part of the public API schema

    def post(self, request: Request, review_id: int) -> Response:
        review = review_get(user=request.user, review_id=review_id)
        current = review_undo(review=review, user=request.user)
        verdict = None
        if current is not None:
            verdict = {
                "id": current.pk,
                "decision": current.decision,
                "candidate": current.candidate_id,
                "reviewer": current.reviewer.get_username() if current.reviewer else None,
                "created_at": current.created_at.isoformat(),
                "rle": current.corrected_rle,
            }
        return Response({"review": verdict})


class ReviewCheckApi(APIView):
    """POST ``{verdict: approved | sent_back, note?}``: the review stage, by a second person."""

    schema = None  # page-support endpoint: not part of the public API schema

    parser_classes = [BoundedJSONParser]

    def post(self, request: Request, review_id: int) -> Response:
        review = review_get(user=request.user, review_id=review_id)
        data = request.data if isinstance(request.data, dict) else {}
        check = review_check(
            review=review, checker=request.user, verdict=data.get("verdict"), note=data.get("note") or ""
        )
        return Response(
            {"verdict": check.verdict, "checker": request.user.get_username(), "note": check.note},
            status=status.HTTP_201_CREATED,
        )


class AssignImagesApi(APIView):
    """POST ``{usernames: [...], only_unassigned?: true}``: share the images among those members."""

    schema = None  # page-support endpoint: not part of the public API schema

    parser_classes = [BoundedJSONParser]

    def post(self, request: Request, project_id: int) -> Response:
        project = project_get(user=request.user, project_id=project_id)
        data = request.data if isinstance(request.data, dict) else {}
        counts = images_assign(
            project=project,
            usernames=data.get("usernames"),
            only_unassigned=data.get("only_unassigned", True) is not False,
        )
        return Response({"assigned": counts, "team": team_progress(project=project)})


class ActivityApi(APIView):
    """GET: the decision history of one expression, oldest first."""

    schema = None  # page-support endpoint: not part of the public API schema

    def get(self, request: Request, expression_id: int) -> Response:
        expression = expression_get(user=request.user, expression_id=expression_id)
        return Response({"activity": activity_list(expression=expression)})


class BulkExpressionsApi(APIView):
    """POST multipart ``file`` (CSV or JSON), optional ``pipeline`` and ``config`` (a JSON object of pipeline
    settings for every row): one job per row. A bad ``config`` is a 400 for the whole batch, naming the key."""

    schema = None  # page-support endpoint: not part of the public API schema

    parser_classes = [MultiPartParser, FormParser]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "job_create"

    def post(self, request: Request, project_id: int) -> Response:
        project = project_get(user=request.user, project_id=project_id)
        upload = request.FILES.get("file")
        if upload is None:
            raise InvalidInput("Attach a CSV or JSON file in the 'file' field.")
        result = expressions_bulk_create(
            project=project,
            data=upload.read(),
            name=upload.name or "upload",
            author=request.user,
            pipeline=(request.data.get("pipeline") or None),
            config=bulk_config_parse(request.data.get("config")),
        )
        return Response(result.to_json(), status=status.HTTP_201_CREATED)


class ExportCocoApi(APIView):
    """GET: COCO JSON of the project's accepted and corrected masks, as a download."""

    schema = None  # page-support endpoint: not part of the public API schema

    def get(self, request: Request, project_id: int) -> HttpResponse:
        project = project_get(user=request.user, project_id=project_id)
        response = JsonResponse(coco_export(project=project))
        name = slugify(project.name) or f"project-{project.pk}"
        response["Content-Disposition"] = f'attachment; filename="{name}-coco.json"'
        return response


class ExportReferApi(APIView):
    """GET ``?dataset=refcoco&split=val``: a RefCOCO-style zip (refs pickle, instances.json, images)."""

    schema = None  # page-support endpoint: not part of the public API schema

    def get(self, request: Request, project_id: int) -> FileResponse:
        project = project_get(user=request.user, project_id=project_id)
        dataset = request.query_params.get("dataset", "refcoco")
        split = request.query_params.get("split", "val")
        archive = refer_export_zip(project=project, dataset=dataset, split=split)
        name = slugify(project.name) or f"project-{project.pk}"
        return FileResponse(
            archive, as_attachment=True, filename=f"{name}-{dataset}.zip", content_type="application/zip"
        )


def _download_name(project, suffix: str) -> str:
    return f"{slugify(project.name) or f'project-{project.pk}'}-{suffix}"


class ExportFormatApi(APIView):
    """GET: the project's kept masks as ``coco-polygons`` (JSON), ``png`` (zip), ``yolo`` (zip) or
    ``label-studio`` (JSON), as a download (formats: ``server.web.services.formats``)."""

    schema = None  # page-support endpoint: not part of the public API schema

    def get(self, request: Request, project_id: int, fmt: str) -> HttpResponse:
        project = project_get(user=request.user, project_id=project_id)
        if fmt == "coco-polygons":
            response = JsonResponse(coco_polygons_export(project=project))
            response["Content-Disposition"] = (
                f'attachment; filename="{_download_name(project, "coco-polygons.json")}"'
            )
            return response
        if fmt == "label-studio":
            tasks = label_studio_export(project=project, base_url=request.build_absolute_uri("/").rstrip("/"))
            response = JsonResponse(tasks, safe=False)
            response["Content-Disposition"] = (
                f'attachment; filename="{_download_name(project, "label-studio.json")}"'
            )
            return response
        makers = {"png": png_masks_zip, "yolo": yolo_zip}
        if fmt not in makers:
            raise InvalidInput(
                f"Unknown export format {fmt!r}; choose coco-polygons, png, yolo or label-studio."
            )
        return FileResponse(
            makers[fmt](project=project),
            as_attachment=True,
            filename=_download_name(project, f"{fmt}.zip"),
            content_type="application/zip",
        )


class ProjectCategoriesApi(APIView):
    """GET / POST ``{categories: [names] | "a, b"}``: the project's label categories."""

    schema = None  # page-support endpoint: not part of the public API schema

    def get(self, request: Request, project_id: int) -> Response:
        project = project_get(user=request.user, project_id=project_id)
        return Response({"categories": list(project.categories or [])})

    def post(self, request: Request, project_id: int) -> Response:
        project = project_get(user=request.user, project_id=project_id)
        data = request.data if isinstance(request.data, dict) else {}
        return Response({"categories": project_categories_set(project=project, names=data.get("categories"))})


class ExpressionCategoryApi(APIView):
    """POST ``{category}``: label one expression with a category of its project."""

    schema = None  # page-support endpoint: not part of the public API schema

    parser_classes = [BoundedJSONParser]

    def post(self, request: Request, expression_id: int) -> Response:
        expression = expression_get(user=request.user, expression_id=expression_id)
        data = request.data if isinstance(request.data, dict) else {}
        expression = expression_category_set(expression=expression, category=data.get("category"))
        return Response({"expression": expression.pk, "category": expression.category})


class ImportCocoApi(APIView):
    """POST multipart ``file``: COCO JSON annotations imported as reviewed masks on the project's images."""

    schema = None  # page-support endpoint: not part of the public API schema

    parser_classes = [MultiPartParser, FormParser]

    def post(self, request: Request, project_id: int) -> Response:
        project = project_get(user=request.user, project_id=project_id)
        upload = request.FILES.get("file")
        if upload is None:
            raise InvalidInput("Attach a COCO JSON file in the 'file' field.")
        result = coco_import(project=project, data=upload.read(), user=request.user)
        return Response(result, status=status.HTTP_201_CREATED)


class RefineCreateApi(APIView):
    """POST ``{image, expression?, candidate?, points_xy, labels, box_xyxy?, mask_rle?}`` -> 202 request."""

    schema = None  # page-support endpoint: not part of the public API schema

    parser_classes = [BoundedJSONParser]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "refine"

    def post(self, request: Request) -> Response:
        data = request.data if isinstance(request.data, dict) else {}
        image_id = data.get("image")
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise InvalidInput("'image' must be the id of an image.")
        image = image_get(user=request.user, image_id=image_id)
        expression = None
        if data.get("expression") is not None:
            if not isinstance(data["expression"], int):
                raise InvalidInput("'expression' must be the id of an expression.")
            expression = expression_get(user=request.user, expression_id=data["expression"])
        candidate_id = data.get("candidate")
        if candidate_id is not None and (not isinstance(candidate_id, int) or isinstance(candidate_id, bool)):
            raise InvalidInput("'candidate' must be the id of a candidate.")
        refine = refine_request_create(
            image=image,
            requested_by=request.user,
            points_xy=data.get("points_xy"),
            labels=data.get("labels"),
            box_xyxy=data.get("box_xyxy"),
            mask_rle=data.get("mask_rle"),
            expression=expression,
            candidate_id=candidate_id,
        )
        return Response(refine_request_json(refine), status=status.HTTP_202_ACCEPTED)


class RefineDetailApi(APIView):
    """GET: the refine request's state, and its mask (COCO RLE) once SAM answered."""

    schema = None  # page-support endpoint: not part of the public API schema

    def get(self, request: Request, request_id: int) -> Response:
        refine = refine_request_get(user=request.user, request_id=request_id)
        return Response(refine_request_json(refine))
