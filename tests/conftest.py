import os
from pathlib import Path

import pytest

from tests.factories import chat_jsonl, memorisable_conversations, write_jsonl
from tests.tiny_model import build_tiny_model

# Tiny models gain nothing from threads, and two busy processes on 2 cores thrash with them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests run as on a CPU without native bf16 (precision auto -> fp32), whatever CPU runs them, so their
# numbers do not depend on the machine; the precision tests turn it on (worker.modeling.CPU_BF16_ENV).
os.environ["LORA_STUDIO_CPU_BF16"] = "0"
import torch  # noqa: E402

# Under pytest-xdist each worker process keeps to its own Redis databases (gw0: 15, 14, 0; gw1: 13, 12, 1; gw2: 11, 10, 2).
XDIST_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
# The real Redis the tests use (another port keeps two test runs on one machine apart).
TEST_REDIS = os.environ.get("TEST_REDIS_HOSTPORT", "127.0.0.1:6379")

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture
def chat_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in memorisable_conversations()])


@pytest.fixture(autouse=True)
def _media_root(request, tmp_path):
    """A temporary MEDIA_ROOT per Django test."""
    if "settings" not in request.fixturenames and not request.node.get_closest_marker("django_db"):
        yield
        return
    settings = request.getfixturevalue("settings")
    settings.MEDIA_ROOT = tmp_path / "media"
    yield


# --- database fixtures shared by the app tests -------------------------------------------------


@pytest.fixture(autouse=True, scope="session")
def _local_cache():
    """The product counts throttles in Redis (CACHE_URL); unit tests need no Redis server, so they count
    in memory. tests/accounts/test_throttle_redis.py checks the shared Redis path."""
    from django.test.utils import override_settings

    with override_settings(
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "lora-studio-tests"}
        }
    ):
        yield


@pytest.fixture(autouse=True)
def _fresh_throttle_counts(request):
    """Per-key request counts live in the cache: each test starts from zero."""
    if "db" not in request.fixturenames and "transactional_db" not in request.fixturenames:
        yield
        return
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def user(db):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def other_user(db):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("bob", password="pw-bob-123")


@pytest.fixture
def client_in(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def base_model(db, tiny_llama):
    from jobs.base_models.services import base_model_register

    return base_model_register(name="tiny-llama", path=tiny_llama)


@pytest.fixture
def api(user):
    from tests.factories import bearer_client

    return bearer_client(user)


@pytest.fixture
def api_bob(other_user):
    from tests.factories import bearer_client

    return bearer_client(other_user)


@pytest.fixture
def dataset(user):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from jobs.datasets.services import dataset_create

    return dataset_create(owner=user, upload=SimpleUploadedFile("colours.jsonl", chat_jsonl()), name="colours.jsonl")


@pytest.fixture
def page_api(user):
    """A client that calls /api/v1/ the way the pages' scripts do: the session cookie plus the CSRF token."""
    import secrets

    from django.conf import settings
    from rest_framework.test import APIClient

    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    token = secrets.token_hex(16)
    client.cookies[settings.CSRF_COOKIE_NAME] = token
    client.credentials(HTTP_X_CSRFTOKEN=token)
    return client


@pytest.fixture
def real_redis(settings):
    """The machine's Redis (database 15, emptied) for live events, stop flags and worker announcements."""
    from jobs.common import events

    settings.REDIS_URL = f"redis://{TEST_REDIS}/{15 - 2 * XDIST_INDEX}"
    events.redis_client.cache_clear()
    events.redis_client().flushdb()
    yield events.redis_client()
    events.redis_client.cache_clear()


# --- object storage (moto's S3 server, a real HTTP endpoint) -----------------------------------


@pytest.fixture(scope="session")
def s3_endpoint():
    from tests.object_store import start_moto

    server, endpoint = start_moto()
    yield endpoint
    server.stop()


@pytest.fixture
def object_store(settings, s3_endpoint, monkeypatch, tmp_path):
    """STORAGE_URL on a fresh bucket of the moto server, as the product reads it; yields the bucket's name."""
    from tests.object_store import new_bucket, store_env
    from webapp.settings import _object_storage

    bucket = new_bucket(s3_endpoint)
    env = store_env(s3_endpoint, bucket)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings.STORAGE_URL = env["STORAGE_URL"]
    settings.STORAGES = {**settings.STORAGES, "files": _object_storage(env["STORAGE_URL"])}
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    yield bucket


# --- order: the longest modules first ------------------------------------------------------------
# `make test` runs on three pytest-xdist workers, each taking whole modules (--dist loadscope) in the order
# collected (pytest.ini turns off xdist's own reordering, which sorts modules by their NUMBER of tests and so
# started the few-test modules that take minutes last, leaving one worker running them alone at the end).
# Starting the modules that take longest first keeps every worker busy to the end. Measured on 2 cores
# (`PYTEST_ADDOPTS=--durations=150 make test`, setup + call + teardown per module, seconds):
LONGEST_FIRST = (
    "tests/integration/test_faults.py",  # 325
    "tests/browser/test_first_hour.py",  # 111
    "tests/slow/test_demo_model.py",  # 95 (converts the demo model once into var/)
    "tests/integration/test_end_to_end.py",  # 86
    "tests/integration/test_object_storage.py",  # 72
    "tests/worker/test_distributed.py",  # 71
    "tests/openai_compat/test_openai_end_to_end.py",  # 68
    "tests/browser/test_security_headers.py",  # 51
    "tests/integration/test_user_models.py",  # 50
    "tests/browser/test_dataset_check.py",  # 50
    "tests/browser/test_compare_vote.py",  # 49
    "tests/browser/test_core_loop.py",  # 46
    "tests/integration/test_routing.py",  # 43
    "tests/integration/test_background_shares.py",  # 42
    "tests/slow/",  # 40
    "tests/integration/test_resume.py",  # 36
    "tests/integration/test_background_queue.py",  # 33
    "tests/tracking/test_mlflow.py",  # 33
    "tests/worker/test_preference.py",  # 26
    "tests/integration/test_fair_queue.py",  # 22
    "tests/accounts/test_storage_quota.py",  # 21
    "tests/browser/",
    "tests/integration/",
)


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if path.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: each module's tests stay together and in their order
