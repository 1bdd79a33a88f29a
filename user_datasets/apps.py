from django.apps import AppConfig


class UserDatasetsConfig(AppConfig):
    """The users' datasets."""

    name = "user_datasets"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from user_datasets import receivers  # noqa: F401  (reports usage)
