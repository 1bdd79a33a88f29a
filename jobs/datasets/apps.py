from django.apps import AppConfig


class UserDatasetsConfig(AppConfig):
    """The users' datasets."""

    name = "jobs.datasets"
    label = "user_datasets"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from jobs.datasets import receivers  # noqa: F401  (reports usage)
