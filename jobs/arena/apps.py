from django.apps import AppConfig


class ArenaConfig(AppConfig):
    """Chat sessions, comparison rounds, answers and votes."""

    name = "jobs.arena"
    default_auto_field = "django.db.models.BigAutoField"
