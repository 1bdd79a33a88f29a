from django.apps import AppConfig


class TrainingConfig(AppConfig):
    """Jobs, metrics, adapters and the train worker's tasks."""

    name = "jobs.training"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from jobs.training import receivers  # noqa: F401  (connects to other domains' signals)
