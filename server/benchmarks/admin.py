from django.contrib import admin

from server.benchmarks.models import (
    BenchmarkPipelineResult,
    BenchmarkRun,
    BenchmarkSentenceResult,
    BenchmarkShard,
)


class PipelineResultInline(admin.TabularInline):
    model = BenchmarkPipelineResult
    extra = 0
    fields = [
        "pipeline",
        "n_sentences",
        "oiou",
        "miou",
        "prec_50",
        "prec_90",
        "no_proposal",
        "seconds_per_sentence",
    ]
    readonly_fields = fields
    can_delete = False


@admin.register(BenchmarkRun)
class BenchmarkRunAdmin(admin.ModelAdmin):
    list_display = ["id", "dataset", "split_by", "split", "state", "distributed", "n_sentences", "created_at"]
    list_filter = ["dataset", "split", "state", "distributed"]
    exclude = ["figure_png"]
    inlines = [PipelineResultInline]


@admin.register(BenchmarkPipelineResult)
class BenchmarkPipelineResultAdmin(admin.ModelAdmin):
    list_display = ["run", "pipeline", "n_sentences", "oiou", "miou", "prec_50", "seconds_per_sentence"]
    list_filter = ["pipeline"]


@admin.register(BenchmarkShard)
class BenchmarkShardAdmin(admin.ModelAdmin):
    list_display = [
        "run",
        "index",
        "state",
        "n_sentences",
        "attempts",
        "worker",
        "heartbeat_at",
        "finished_at",
    ]
    list_filter = ["state"]


@admin.register(BenchmarkSentenceResult)
class BenchmarkSentenceResultAdmin(admin.ModelAdmin):
    list_display = ["run", "pipeline", "sent_id", "image_id", "iou", "no_proposal", "missing_image"]
    list_filter = ["pipeline", "no_proposal", "missing_image"]
    search_fields = ["text"]
