import pytest
from django.contrib.auth import get_user_model

from jobs.services import base_model_register


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def other_user(db):
    return get_user_model().objects.create_user("bob", password="pw-bob-123")


@pytest.fixture
def client_in(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def base_model(db, tiny_llama):
    return base_model_register(name="tiny-llama", path=tiny_llama)
