import json

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from jobs.services import dataset_create
from jobs.services_keys import api_key_create
from tests.app.conftest import base_model, other_user, user  # noqa: F401 (shared fixtures)
from tests.conftest import memorisable_conversations


@pytest.fixture(autouse=True)
def _fresh_throttle_counts():
    cache.clear()
    yield
    cache.clear()


def bearer_client(owner) -> APIClient:
    _, raw = api_key_create(owner=owner, name="test")
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    client.raw_key = raw
    return client


@pytest.fixture
def api(user):
    return bearer_client(user)


@pytest.fixture
def api_bob(other_user):
    return bearer_client(other_user)


def chat_jsonl() -> bytes:
    return "".join(json.dumps({"messages": m}) + "\n" for m in memorisable_conversations()).encode()


@pytest.fixture
def dataset(user):
    return dataset_create(owner=user, upload=SimpleUploadedFile("colours.jsonl", chat_jsonl()), name="colours.jsonl")
