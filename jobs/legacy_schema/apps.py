from django.apps import AppConfig


class LegacySchemaConfig(AppConfig):
    """Keeps the label `jobs`, so existing databases' migration records still match."""

    name = "jobs.legacy_schema"
    label = "jobs"
