"""Admin for refine requests (read mostly: they are written by the review page and the worker)."""

from django.contrib import admin

from server.web.models import RefineRequest


@admin.register(RefineRequest)
class RefineRequestAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "image",
        "expression",
        "state",
        "attempts",
        "worker",
        "result_area",
        "seconds",
        "requested_by",
        "created_at",
    )
    list_filter = ("state",)
    search_fields = ("id", "image__original_name", "expression__text")
    raw_id_fields = ("image", "expression", "candidate", "requested_by")
    readonly_fields = ("created_at", "dispatched_at", "started_at", "heartbeat_at", "finished_at")
