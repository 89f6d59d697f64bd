"""Benchmark runs and their pages."""

from django.apps import AppConfig


class BenchmarksConfig(AppConfig):
    name = "server.benchmarks"
    label = "benchmarks"
    verbose_name = "Benchmarks"
    default_auto_field = "django.db.models.BigAutoField"
