import pytest


@pytest.fixture
def allow_local(settings):
    """Let webhooks reach the tests' local receivers (127.0.0.1, any port), as an admin would allow an
    internal endpoint with WEBHOOK_ALLOWED_HOSTS / WEBHOOK_ALLOWED_PORTS."""
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_ALLOWED_PORTS = [(1, 65535)]
