"""The core app: projects, images, expressions, segmentation jobs, candidates and reviews."""

from django.apps import AppConfig


class RisConfig(AppConfig):
    name = "server.ris"
    label = "ris"
    verbose_name = "Referring image segmentation"
    default_auto_field = "django.db.models.BigAutoField"
