from django.apps import AppConfig


class WorkersCliConfig(AppConfig):
    name = "workers.cli"
    label = "workers_cli"
    verbose_name = "Engine commands"
