"""Personal API keys: the command, Bearer authentication, revocation, throttling and the keys page."""

import datetime as dt
import hashlib
from io import StringIO

from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from jobs.accounts.models import ApiKey
from jobs.accounts.services import api_key_create, api_key_revoke


def test_command_prints_the_key_last_and_stores_only_its_hash(user):
    out = StringIO()
    call_command("create_api_key", "alice", "--name", "laptop", stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    assert raw.startswith("ls-") and len(raw) >= 3 + 32
    key = ApiKey.objects.get(owner=user)
    assert key.name == "laptop" and key.prefix == raw[:8] and key.hashed == hashlib.sha256(raw.encode()).hexdigest()
    assert not ApiKey.objects.filter(hashed=raw).exists()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/v1/models").status_code == 200
    assert client.get("/api/v1/jobs/").status_code == 200  # the REST API takes the same keys
    assert ApiKey.objects.get(id=key.id).last_used is not None


def test_unknown_user_is_a_command_error(db):
    import pytest
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no user named 'nobody'"):
        call_command("create_api_key", "nobody", stdout=StringIO())


def test_missing_wrong_and_revoked_keys_get_401_openai_errors(user):
    key, raw = api_key_create(owner=user, name="x")
    client = APIClient()
    response = client.get("/v1/models")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert response.json()["error"]["type"] == "invalid_request_error"
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}x")
    assert client.get("/v1/models").status_code == 401
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/v1/models").status_code == 200
    api_key_revoke(key=key, by=user)
    response = client.get("/v1/models")
    assert response.status_code == 401 and set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert client.get("/api/v1/jobs/").status_code == 401
    assert client.post("/v1/chat/completions", {"model": "x", "messages": []}, format="json").status_code == 401


def test_last_used_is_written_at_most_once_a_minute(user):
    key, raw = api_key_create(owner=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    client.get("/v1/models")
    first = ApiKey.objects.get(id=key.id).last_used
    client.get("/v1/models")
    assert ApiKey.objects.get(id=key.id).last_used == first
    ApiKey.objects.filter(id=key.id).update(last_used=timezone.now() - dt.timedelta(minutes=2))
    client.get("/v1/models")
    assert ApiKey.objects.get(id=key.id).last_used > first - dt.timedelta(seconds=1)


def test_throttling_is_per_key_and_answers_429(user, settings):
    settings.API_THROTTLE_RATE = "3/min"
    _, raw = api_key_create(owner=user)
    _, other = api_key_create(owner=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert [client.get("/v1/models").status_code for _ in range(3)] == [200, 200, 200]
    response = client.get("/v1/models")
    assert response.status_code == 429 and response.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(response["Retry-After"]) >= 1
    assert client.post("/v1/chat/completions", {"model": "x", "messages": []}, format="json").status_code == 429
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {other}")
    assert client.get("/v1/models").status_code == 200


def test_session_requests_are_not_throttled_by_key(client, user, settings):
    settings.API_THROTTLE_RATE = "1/min"
    client.force_login(user)
    assert [client.get("/api/v1/jobs/").status_code for _ in range(3)] == [200, 200, 200]


def test_keys_page_shows_a_new_key_once_and_revokes(client, user, other_user):
    client.force_login(user)
    assert client.get("/account/keys/").status_code == 200
    response = client.post("/account/keys/", {"name": "ci"})
    assert response.status_code == 302 and response["Location"] == "/account/keys/"
    key = ApiKey.objects.get(owner=user)
    shown = client.get("/account/keys/")
    assert shown["Cache-Control"] == "no-store"
    html = shown.content.decode()
    raw = html.split('id="new-key-value">')[1].split("<")[0]
    assert raw.startswith(key.prefix) and key.hashed == hashlib.sha256(raw.encode()).hexdigest()
    listing = client.get("/account/keys/").content.decode()
    assert raw not in listing and f"{key.prefix}..." in listing and "ci" in listing
    assert ApiKey.objects.filter(owner=user).count() == 1, "reloading the page that showed the key makes no other"
    assert 'href="/account/keys/"' in listing  # the nav link
    # Another user's key cannot be revoked (404), one's own can.
    _, _ = api_key_create(owner=other_user)
    bob_key = ApiKey.objects.get(owner=other_user)
    assert client.post(f"/account/keys/{bob_key.id}/revoke/").status_code == 404
    assert client.post(f"/account/keys/{key.id}/revoke/").status_code == 302
    assert ApiKey.objects.get(id=key.id).revoked and not ApiKey.objects.get(id=bob_key.id).revoked
    assert "revoked" in client.get("/account/keys/").content.decode()


def test_keys_page_needs_login(client, db):
    assert client.get("/account/keys/").status_code == 302
