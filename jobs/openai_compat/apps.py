from django.apps import AppConfig


class OpenAICompatConfig(AppConfig):
    """The OpenAI-compatible API (no models)."""

    name = "jobs.openai_compat"
