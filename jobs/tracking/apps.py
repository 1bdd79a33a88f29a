from django.apps import AppConfig


class TrackingConfig(AppConfig):
    """Experiment tracking (MLflow) settings and the logging of finished jobs."""

    name = "jobs.tracking"
    label = "tracking"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from jobs.tracking import receivers  # noqa: F401  (listens for job ends)
