"""Django admin for every model of the app (read-mostly: masks are shown as their size, not their RLE)."""

from django.contrib import admin

from server.ris.models import Candidate, Expression, Image, Project, Review, SegmentationJob


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "created_by", "created_at")
    search_fields = ("name",)
    filter_horizontal = ("members",)


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ("id", "original_name", "project", "format", "width", "height", "created_at")
    list_filter = ("format", "project")
    search_fields = ("original_name", "sha256")
    readonly_fields = ("sha256", "storage_key", "size_bytes", "width", "height", "format")


@admin.register(Expression)
class ExpressionAdmin(admin.ModelAdmin):
    list_display = ("id", "text", "image", "author", "created_at")
    search_fields = ("text",)
    raw_id_fields = ("image",)


class CandidateInline(admin.TabularInline):
    model = Candidate
    fields = ("rank", "score", "area", "bbox_xyxy")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(SegmentationJob)
class SegmentationJobAdmin(admin.ModelAdmin):
    list_display = ("id", "expression", "pipeline", "state", "progress", "attempts", "worker", "created_at")
    list_filter = ("state", "pipeline")
    search_fields = ("expression__text", "worker", "celery_task_id")
    raw_id_fields = ("expression",)
    readonly_fields = (
        "created_at",
        "dispatched_at",
        "started_at",
        "heartbeat_at",
        "finished_at",
        "celery_task_id",
    )
    inlines = [CandidateInline]


@admin.register(Candidate)
class CandidateAdmin(admin.ModelAdmin):
    list_display = ("id", "job", "rank", "score", "area")
    raw_id_fields = ("job",)


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ("id", "expression", "decision", "candidate", "reviewer", "created_at")
    list_filter = ("decision",)
    raw_id_fields = ("expression", "candidate")
