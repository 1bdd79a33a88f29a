from django.apps import AppConfig


class BaseModelsConfig(AppConfig):
    """The base-model catalogue."""

    name = "jobs.base_models"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from jobs.base_models import receivers  # noqa: F401  (reports usage)
