"""Input serializers (shape checks only; rules live in services) and output serializers (JSON shapes).

Masks are COCO RLE ``{"size": [H, W], "counts": str}``; boxes are ``[x0, y0, x1, y1]`` pixels.
"""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from server.ris.models import Expression, Image, JobState, ReviewDecision
from server.ris.selectors import IMAGE_STATUSES

# -- shared shapes ------------------------------------------------------------------------------------


class RleSerializer(serializers.Serializer):
    size = serializers.ListField(child=serializers.IntegerField(), min_length=2, max_length=2)
    counts = serializers.CharField(trim_whitespace=False)


class ErrorOut(serializers.Serializer):
    error = serializers.CharField()
    details = serializers.DictField(required=False)


# -- auth ------------------------------------------------------------------------------------------


class TokenInput(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)


class TokenOut(serializers.Serializer):
    token = serializers.CharField()


# -- projects --------------------------------------------------------------------------------------


class ProjectCreateInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)


class ProjectMemberAddInput(serializers.Serializer):
    username = serializers.CharField(max_length=150)


class ProjectOut(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField(source="created_by.get_username")
    members = serializers.SerializerMethodField()

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_members(self, project) -> list[str]:
        return sorted(user.get_username() for user in project.members.all())


# -- images ----------------------------------------------------------------------------------------


class ImageListFilterInput(serializers.Serializer):
    status = serializers.ChoiceField(choices=IMAGE_STATUSES, required=False)
    q = serializers.CharField(required=False, allow_blank=True, max_length=200)


class ImageFileQueryInput(serializers.Serializer):
    max_side = serializers.IntegerField(required=False, min_value=16, max_value=16384)


class ImageUploadInput(serializers.Serializer):
    files = serializers.ListField(
        child=serializers.FileField(), help_text="One or many images, or .zip archives of images."
    )


class ImageOut(serializers.Serializer):
    id = serializers.IntegerField()
    project = serializers.IntegerField(source="project_id")
    original_name = serializers.CharField()
    sha256 = serializers.CharField()
    format = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    size_bytes = serializers.IntegerField()
    status = serializers.ChoiceField(choices=IMAGE_STATUSES)
    created_at = serializers.DateTimeField()
    file_url = serializers.SerializerMethodField()

    def get_file_url(self, image: Image) -> str:
        return reverse("ris-api:image-file", kwargs={"image_id": image.pk})


class UploadedImageOut(ImageOut):
    duplicate = serializers.BooleanField()


class RejectedFileOut(serializers.Serializer):
    name = serializers.CharField()
    error = serializers.CharField()


class ImageUploadOut(serializers.Serializer):
    images = UploadedImageOut(many=True)
    rejected = RejectedFileOut(many=True)


# -- jobs, candidates, reviews, expressions --------------------------------------------------------


class JobOut(serializers.Serializer):
    id = serializers.IntegerField()
    expression = serializers.IntegerField(source="expression_id")
    state = serializers.ChoiceField(choices=JobState.choices)
    progress = serializers.FloatField()
    queue_position = serializers.IntegerField(
        allow_null=True,
        help_text="Jobs you may see ahead of this one in its lane (running, or queued before it); null once running.",
    )
    lane = serializers.CharField(
        help_text="interactive (typed on one image) or background (bulk rows, retries)."
    )
    stage = serializers.JSONField(
        help_text='What the worker is doing: {"name", "done", "total", "unit", "estimate_s"}; {} while queued.'
    )
    elapsed_s = serializers.FloatField(help_text="Seconds waited (queued) or run (running, over).")
    estimate_s = serializers.FloatField(allow_null=True, help_text="Seconds left, estimated; null: unknown.")
    enqueued_at = serializers.DateTimeField()
    error = serializers.CharField(allow_blank=True)
    timings = serializers.JSONField()
    attempts = serializers.IntegerField()
    pipeline = serializers.CharField()
    config = serializers.JSONField()
    worker = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class CandidateOut(serializers.Serializer):
    id = serializers.IntegerField()
    rank = serializers.IntegerField()
    rle = RleSerializer()
    bbox_xyxy = serializers.ListField(child=serializers.FloatField(), min_length=4, max_length=4)
    area = serializers.IntegerField()
    score = serializers.FloatField()
    components = serializers.DictField(child=serializers.FloatField())


class ReviewCreateInput(serializers.Serializer):
    decision = serializers.ChoiceField(choices=ReviewDecision.choices)
    candidate = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    rle = serializers.JSONField(required=False, allow_null=True, help_text="COCO RLE of the corrected mask.")


class ReviewOut(serializers.Serializer):
    id = serializers.IntegerField()
    expression = serializers.IntegerField(source="expression_id")
    decision = serializers.ChoiceField(choices=ReviewDecision.choices)
    candidate = serializers.IntegerField(source="candidate_id", allow_null=True)
    rle = RleSerializer(source="corrected_rle", allow_null=True)
    reviewer = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    @extend_schema_field(OpenApiTypes.STR)
    def get_reviewer(self, review) -> str | None:
        return review.reviewer.get_username() if review.reviewer else None


class ExpressionCreateInput(serializers.Serializer):
    text = serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=100_000)
    pipeline = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=64)
    config = serializers.JSONField(required=False, allow_null=True)


class ExpressionOut(serializers.Serializer):
    id = serializers.IntegerField()
    image = serializers.IntegerField(source="image_id")
    text = serializers.CharField()
    author = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    job = JobOut(source="latest_job", allow_null=True)
    review = ReviewOut(source="latest_review", allow_null=True)

    @extend_schema_field(OpenApiTypes.STR)
    def get_author(self, expression: Expression) -> str | None:
        return expression.author.get_username() if expression.author else None


class PipelineOut(serializers.Serializer):
    name = serializers.CharField()
    title = serializers.CharField()
    paper = serializers.CharField()
    description = serializers.CharField()
