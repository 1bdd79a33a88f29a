from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Sign-up, API keys, Bearer authentication and per-key throttling."""

    name = "jobs.accounts"
    default_auto_field = "django.db.models.BigAutoField"
