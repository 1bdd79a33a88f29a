"""API throttles hold across processes: two separate processes, each with its own Django, share one
count through the real Redis (127.0.0.1:6379, db 14) the product's default cache points at."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import TEST_REDIS, XDIST_INDEX

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("TEST_THROTTLE_REDIS_URL", f"redis://{TEST_REDIS}/{14 - 2 * XDIST_INDEX}")

# One process: Django with the product's settings (Redis cache at CACHE_URL), asking the API-key throttle
# `n` times for key `key_id` (an unsaved row: the throttle needs only its id); prints allowed/refused.
ASK = """
import sys, django
django.setup()
from django.conf import settings
assert settings.CACHES["default"]["BACKEND"].endswith("RedisCache"), settings.CACHES
from jobs.accounts.auth import throttle_wait
from jobs.accounts.models import ApiKey
key = ApiKey(id=int(sys.argv[1]))
print(" ".join("allowed" if throttle_wait(key) is None else "refused" for _ in range(int(sys.argv[2]))))
"""


def ask_in_a_new_process(key_id: int, n: int, tmp_path) -> list[str]:
    env = {
        **os.environ,
        "CACHE_URL": REDIS_URL,
        "API_THROTTLE_RATE": "3/min",
        "DJANGO_SETTINGS_MODULE": "webapp.settings",
        "LORA_STUDIO_VAR": str(tmp_path / "var"),
        "LOG_LEVEL": "WARNING",
    }
    done = subprocess.run(
        [sys.executable, "-c", ASK, str(key_id), str(n)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.fixture
def redis_db14():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    yield client
    client.close()


@pytest.mark.integration
def test_the_api_key_throttle_holds_across_two_processes(redis_db14, tmp_path):
    key_id = uuid.uuid4().int % 10**12  # a key of this run only: the db may be shared
    try:
        assert ask_in_a_new_process(key_id, 2, tmp_path) == ["allowed", "allowed"]
        # A second process sees the first one's two requests: one more is allowed, then refused.
        assert ask_in_a_new_process(key_id, 2, tmp_path) == ["allowed", "refused"]
        assert any(str(key_id) in k.decode() for k in redis_db14.scan_iter(match="lora-studio:*"))
    finally:
        for k in redis_db14.scan_iter(match=f"lora-studio:*throttle_api_key_{key_id}"):
            redis_db14.delete(k)


def test_the_default_cache_is_redis_in_its_own_database(tmp_path):
    """Without CACHE_URL the cache is the broker's Redis server, db 1: flushing it never drops queued tasks."""
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.CELERY_BROKER_URL, settings.CACHES['default']['LOCATION'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "CACHE_URL"}
    env.update(
        REDIS_URL="redis://redis.internal:6379/0",
        DJANGO_SETTINGS_MODULE="webapp.settings",
        LORA_STUDIO_VAR=str(tmp_path / "var"),
        LOG_LEVEL="WARNING",
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["redis://redis.internal:6379/0", "redis://redis.internal:6379/1"]
