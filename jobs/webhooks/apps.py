from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """Webhooks and their deliveries."""

    name = "jobs.webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from jobs.webhooks import receivers  # noqa: F401  (listens for job ends)
