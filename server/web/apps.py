"""The annotator's pages (upload, image list, review loop) and the web-only endpoints behind them."""

from django.apps import AppConfig


class WebConfig(AppConfig):
    name = "server.web"
    label = "web"
    verbose_name = "Annotator pages"
    default_auto_field = "django.db.models.BigAutoField"
