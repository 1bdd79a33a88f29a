"""Throttle counts live in Redis; while it restarts, API requests go through instead of failing."""

from tests.ports import free_port


def test_requests_pass_while_the_throttle_store_is_down(settings, api, user):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/1",
            "OPTIONS": {"socket_connect_timeout": 0.5},
        }
    }  # nobody listens there
    response = api.get("/api/v1/datasets/")
    assert response.status_code == 200 and response.json() == []
