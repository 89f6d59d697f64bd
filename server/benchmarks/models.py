"""A benchmark run, its per-pipeline results, and for distributed runs its shards and per-sentence rows.

``BenchmarkSentenceResult`` is the shared results table of a distributed run (there is no Celery result
backend): each shard task writes its sentences here, and the command merges them. Single-process runs
store their sentences here too, so every run's page reads one place. ``(run, pipeline, sent_id)`` is unique,
so a shard delivered twice (late acks after a killed worker) cannot count a sentence twice.

Models hold data and invariants; writes go through ``server.benchmarks.services``.
"""

from __future__ import annotations

from django.db import models


class BenchmarkRun(models.Model):
    class State(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        INTERRUPTED = "interrupted"

    dataset = models.CharField(max_length=32)
    split_by = models.CharField(max_length=16)
    split = models.CharField(max_length=16)
    pipelines = models.JSONField(default=list)
    spec = models.JSONField(default=dict, help_text="BenchmarkSpec as JSON (data root, configs, limit, ...)")
    distributed = models.BooleanField(default=False)
    device = models.CharField(max_length=16, blank=True)
    out_dir = models.CharField(max_length=1000, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    error = models.TextField(blank=True)
    n_images = models.PositiveIntegerField(default=0)
    n_sentences = models.PositiveIntegerField(default=0)
    missing_images = models.JSONField(default=list, blank=True)
    summary_markdown = models.TextField(blank=True)
    figure_png = models.BinaryField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The command process driving the run (single-process and distributed alike): a run whose process is
    # gone or silent is marked interrupted by ``services.runs_reconcile`` (never left "running").
    host = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.dataset} ({self.split_by}) {self.split}: {', '.join(self.pipelines)}"


class BenchmarkPipelineResult(models.Model):
    """The metrics of one pipeline in one run (percentages; seconds inside ``Engine.predict``)."""

    run = models.ForeignKey(BenchmarkRun, on_delete=models.CASCADE, related_name="pipeline_results")
    pipeline = models.CharField(max_length=64)
    config = models.JSONField(default=dict, blank=True)
    n_sentences = models.PositiveIntegerField()
    n_images = models.PositiveIntegerField()
    oiou = models.FloatField()
    miou = models.FloatField()
    prec_50 = models.FloatField()
    prec_60 = models.FloatField()
    prec_70 = models.FloatField()
    prec_80 = models.FloatField()
    prec_90 = models.FloatField()
    no_proposal = models.PositiveIntegerField(default=0)
    missing_image = models.PositiveIntegerField(default=0)
    seconds_per_sentence = models.FloatField()
    seconds_per_image = models.FloatField()
    model_calls_per_sentence = models.JSONField(default=dict, blank=True)
    iou_histogram = models.JSONField(default=list, blank=True)
    ranking = models.JSONField(
        default=dict,
        blank=True,
        help_text="Hit@k, oracle IoU@k, ceiling_iou, ceiling_hit in percent (workers.engine.data.metrics)",
    )

    class Meta:
        ordering = ["run", "pipeline"]
        constraints = [
            models.UniqueConstraint(fields=["run", "pipeline"], name="benchmark_pipeline_once_per_run")
        ]

    def __str__(self) -> str:
        return f"{self.pipeline} oIoU {self.oiou:.2f} mIoU {self.miou:.2f}"

    #: The ranking columns in page order (keys of ``ranking``; k as in ``workers.engine.data.metrics.HIT_KS``).
    RANKING_KEYS = (
        *(f"hit@{k}" for k in (1, 3, 5, 10)),
        *(f"oracle_iou@{k}" for k in (1, 3, 5, 10)),
        "ceiling_iou",
        "ceiling_hit",
    )

    @property
    def ranking_cells(self) -> list[float | None]:
        """``ranking``'s values in ``RANKING_KEYS`` order (``None`` for a run stored before they existed)."""
        return [self.ranking.get(key) for key in self.RANKING_KEYS]


class BenchmarkShard(models.Model):
    """A slice of a distributed run's images, handled by one ``run_benchmark_shard`` task.

    Claimed, kept alive and reconciled by the rules of every kind of work (``server.ris.services.work``):
    ``attempts`` counted at each claim, ``celery_task_id`` the message that claimed it, ``queue`` where its
    messages go, ``dispatched_at`` when it was last sent, ``heartbeat_at`` when its worker last reported.
    """

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    run = models.ForeignKey(BenchmarkRun, on_delete=models.CASCADE, related_name="shards")
    index = models.PositiveIntegerField()
    image_ids = models.JSONField(default=list)
    n_sentences = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    celery_task_id = models.CharField(max_length=64, blank=True, default="")
    queue = models.CharField(
        max_length=200, blank=True, default="", help_text="Celery queue of its messages (blank: routed, gpu)."
    )
    missing_images = models.JSONField(default=list, blank=True)
    configs = models.JSONField(
        default=dict, blank=True, help_text="per pipeline, the full config the worker ran (Prediction.config)"
    )
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="benchmark_shard_index_once")]

    def __str__(self) -> str:
        return f"run {self.run_id} shard {self.index} ({self.state})"


class BenchmarkSentenceResult(models.Model):
    """One sentence under one pipeline (fields of ``workers.engine.data.benchmark.SentenceResult``)."""

    run = models.ForeignKey(BenchmarkRun, on_delete=models.CASCADE, related_name="sentence_results")
    pipeline = models.CharField(max_length=64)
    sent_id = models.BigIntegerField()
    ref_id = models.BigIntegerField()
    ann_id = models.BigIntegerField()
    image_id = models.BigIntegerField()
    text = models.TextField()
    intersection = models.BigIntegerField()
    union = models.BigIntegerField()
    iou = models.FloatField()
    pred_area = models.BigIntegerField()
    gt_area = models.BigIntegerField()
    n_candidates = models.PositiveIntegerField()
    top_score = models.FloatField(null=True, blank=True)
    no_proposal = models.BooleanField(default=False)
    missing_image = models.BooleanField(default=False)
    seconds = models.FloatField()
    image_seconds = models.FloatField()
    model_calls = models.JSONField(default=dict, blank=True)
    ranked_ious = models.JSONField(
        default=list, blank=True, help_text="IoUs of the top 10 candidates, rank order"
    )
    ceiling_iou = models.FloatField(null=True, blank=True, help_text="best IoU over every candidate")

    class Meta:
        ordering = ["run", "pipeline", "image_id", "sent_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "pipeline", "sent_id"], name="benchmark_sentence_once_per_run"
            )
        ]
        indexes = [models.Index(fields=["run", "pipeline", "iou"])]

    def __str__(self) -> str:
        return f"{self.pipeline} sentence {self.sent_id}: IoU {self.iou:.3f}"
