from django.apps import AppConfig


class BaseModelsConfig(AppConfig):
    """The base-model catalogue."""

    name = "jobs.base_models"
    default_auto_field = "django.db.models.BigAutoField"
