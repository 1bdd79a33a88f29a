"""Parse children started by requests are bounded per user and in all (slots counted in a real Redis); beyond,
the REST API, the OpenAI API and the page answer 429 with Retry-After. A slot comes back when its check ends
in any way, and one a killed process held expires on its own."""

from __future__ import annotations

import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.common.events import redis_client
from jobs.common.exceptions import Busy
from jobs.datasets import parse_slots
from jobs.datasets.models import Dataset
from jobs.datasets.parse_slots import parse_slot
from jobs.datasets.services import dataset_create
from tests.factories import chat_jsonl
from worker.data.problems import DatasetError


@pytest.fixture
def caps(settings, real_redis):
    settings.PARSE_CHILDREN_PER_USER = 2
    settings.PARSE_CHILDREN_TOTAL = 3
    return real_redis


def held(redis, key=parse_slots.TOTAL_KEY) -> int:
    return redis.zcard(key)


def test_the_user_cap_binds_before_the_total_and_slots_come_back(caps, user, other_user):
    with parse_slot(user), parse_slot(user):
        with pytest.raises(Busy) as mine:
            with parse_slot(user):
                pass
        assert mine.value.status == 429 and mine.value.retry_after >= 1
        assert "you already have 2 uploads being checked" in mine.value.message
        with parse_slot(other_user):  # bob still has his own slots: the third in all
            with pytest.raises(Busy) as all_taken:
                with parse_slot(other_user):
                    pass
            assert "the server is checking as many uploads as it can" in all_taken.value.message
        assert held(caps) == 2
    assert held(caps) == 0 and held(caps, parse_slots.user_key(user)) == 0
    with parse_slot(other_user), parse_slot(other_user):
        pass


def test_a_slot_a_killed_process_held_expires_on_its_own(caps, user, settings, monkeypatch):
    settings.DATASET_PARSE_SECONDS = 1
    monkeypatch.setattr(parse_slots, "SLOT_MARGIN_SECONDS", 0)
    stuck = [parse_slot(user) for _ in range(2)]
    for slot in stuck:
        slot.__enter__()  # never left: as if the web process died during the check
    with pytest.raises(Busy):
        parse_slot(user).__enter__()
    time.sleep(2.1)
    with parse_slot(user), parse_slot(user):
        assert held(caps) == 2


def test_a_check_that_times_out_or_fails_gives_its_slot_back(caps, user, settings):
    settings.DATASET_PARSE_SECONDS = 0.001  # less than starting Python takes: the child is killed
    for _ in range(3):  # more checks than the cap: each one's slot came back
        with pytest.raises(DatasetError, match="took longer than"):
            dataset_create(owner=user, upload=SimpleUploadedFile("c.jsonl", chat_jsonl()))
    settings.DATASET_PARSE_SECONDS = 60
    with pytest.raises(DatasetError):
        dataset_create(owner=user, upload=SimpleUploadedFile("bad.jsonl", b'{"messages": [}\n'))
    assert held(caps) == 0
    assert dataset_create(owner=user, upload=SimpleUploadedFile("c.jsonl", chat_jsonl())).rows > 0


@pytest.fixture
def fill():
    """Take every slot of a user (held, as by checks still running, until the test ends)."""
    held = []

    def take(user):
        for _ in range(2):
            held.append(parse_slot(user))
            held[-1].__enter__()

    yield take
    for slot in held:
        slot.__exit__(None, None, None)


def test_rest_upload_beyond_the_cap_is_a_429_with_retry_after(caps, user, api, fill):
    fill(user)
    response = api.post("/api/v1/datasets/", {"file": SimpleUploadedFile("c.jsonl", chat_jsonl())}, format="multipart")
    assert response.status_code == 429, response.content
    assert int(response["Retry-After"]) >= 1
    assert response.json()["error"]["message"].startswith("you already have 2 uploads being checked")
    assert not Dataset.objects.exists()


def test_openai_upload_beyond_the_cap_is_openais_rate_limit_error(caps, user, api, fill):
    fill(user)
    response = api.post(
        "/v1/files", {"file": SimpleUploadedFile("c.jsonl", chat_jsonl()), "purpose": "fine-tune"}, format="multipart"
    )
    assert response.status_code == 429, response.content
    assert int(response["Retry-After"]) >= 1
    error = response.json()["error"]
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded" and "again" in error["message"]


def test_the_page_shows_why_and_when_to_come_back(caps, user, client_in, fill):
    fill(user)
    response = client_in.post("/datasets/", {"file": SimpleUploadedFile("c.jsonl", chat_jsonl()), "name": "x"})
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1
    assert "you already have 2 uploads being checked" in response.content.decode()


def test_without_redis_the_slots_are_counted_in_this_process(settings, user, db):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    settings.PARSE_CHILDREN_PER_USER = 1
    redis_client.cache_clear()
    try:
        with parse_slot(user):
            with pytest.raises(Busy):
                with parse_slot(user):
                    pass
        with parse_slot(user):
            pass
    finally:
        redis_client.cache_clear()


def test_the_demo_button_says_why_when_every_slot_is_taken(caps, user, client_in, fill):
    fill(user)
    response = client_in.post("/datasets/demo/", follow=True)
    assert response.status_code == 200 and "you already have 2 uploads being checked" in response.content.decode()
    assert not Dataset.objects.exists()
