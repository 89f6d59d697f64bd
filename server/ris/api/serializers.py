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


class AsciiIntegerField(serializers.IntegerField):
    """An integer written in ASCII digits (an optional leading minus): "²" or "٣" are refused, not read.

    For query parameters, where text arrives; ``int()`` alone accepts other scripts' digits and "1_000".
    """

    default_error_messages = {"invalid": "A whole number in ASCII digits (0-9) is required."}

    def to_internal_value(self, data: object) -> int:
        if isinstance(data, str):
            text = data.strip()
            digits = text[1:] if text.startswith("-") else text
            if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
                self.fail("invalid")
        return super().to_internal_value(data)


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
    max_side = AsciiIntegerField(required=False, min_value=16, max_value=16384)


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
        help_text='What the worker is doing: {"name", "done", "total", "unit", "estimate_s"}; {} while queued. '
        "name: loading, waiting (for another worker's preparation of the image), proposals, features, "
        "scoring, writing."
    )
    elapsed_s = serializers.FloatField(help_text="Seconds waited (queued) or run (running, over).")
    estimate_s = serializers.FloatField(allow_null=True, help_text="Seconds left, estimated; null: unknown.")
    partial = serializers.BooleanField(
        help_text="True while the job runs and has early candidates (a coarse grid); better ones replace them."
    )
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


JOBS_RETRY_MAX = 500


class JobsRetryInput(serializers.Serializer):
    jobs = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        min_length=1,
        max_length=JOBS_RETRY_MAX,
        help_text="Ids of failed or cancelled jobs; all are queued again in the background lane, or none.",
    )

    def validate_jobs(self, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise serializers.ValidationError("Each job may be named once.")
        return value


class CandidateOut(serializers.Serializer):
    id = serializers.IntegerField()
    rank = serializers.IntegerField()
    rle = RleSerializer()
    bbox_xyxy = serializers.ListField(child=serializers.FloatField(), min_length=4, max_length=4)
    area = serializers.IntegerField()
    score = serializers.FloatField()
    components = serializers.DictField(child=serializers.FloatField())
    partial = serializers.BooleanField(
        help_text="An early candidate (coarse grid, while the job ran); false for the final ones."
    )


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


def pipeline_config_schemas() -> dict[str, dict]:
    """Each pipeline's config as JSON Schema (types, bounds, choices, defaults), from the torch-free catalogue."""
    from workers.engine.methods.catalogue import pipeline_catalogue

    return {name: entry.config_class().schema() for name, entry in sorted(pipeline_catalogue().items())}


def _config_field_schema() -> dict:
    schemas = pipeline_config_schemas()
    return {
        "type": "object",
        "nullable": True,
        "description": (
            "Settings of the chosen pipeline to override (nested: {'amg': {'points_per_side': 16}}); checked "
            "at the door: an unknown key, a wrong type, a value out of bounds or a job whose estimated work "
            "passes the ceilings (RIS_JOB_MAX_PROMPTS, RIS_JOB_MAX_EMBEDDINGS) is a 400 naming the key. One "
            "schema per pipeline: " + ", ".join(schemas)
        ),
        "oneOf": [{**schema, "title": f"{name} config"} for name, schema in schemas.items()],
    }


@extend_schema_field(_config_field_schema())
class PipelineConfigField(serializers.JSONField):
    """A job's config overrides (a JSON object); documented with every pipeline's config schema."""


class ExpressionCreateInput(serializers.Serializer):
    text = serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=100_000)
    pipeline = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=64)
    config = PipelineConfigField(required=False, allow_null=True)


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


class PipelineModelOut(serializers.Serializer):
    key = serializers.CharField(help_text="dotted config key naming the model")
    name = serializers.CharField(help_text="store model name under the engine's profile")
    present = serializers.BooleanField(help_text="in the model store with every file on disk")


class PipelineOut(serializers.Serializer):
    name = serializers.CharField()
    title = serializers.CharField()
    paper = serializers.CharField()
    description = serializers.CharField()
    needs = serializers.CharField(allow_blank=True, help_text="one line: the models and hardware it needs")
    opt_in = serializers.BooleanField(
        help_text="large or gated models fetched by name, not on first use; never replaced by stand-ins"
    )
    models = PipelineModelOut(many=True)
    models_present = serializers.BooleanField(help_text="every model of its default config is present")
    config_schema = serializers.JSONField(help_text="JSON Schema of the pipeline's config (bounds, defaults)")
