"""REST endpoints for webhooks: create / list / detail / delete, deliveries, a signed test ping and secret
rotation; owner-only, CSRF-checked for sessions, and errors naming the field."""

import base64
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from jobs.webhooks.models import Webhook, WebhookDelivery
from jobs.webhooks.services import webhook_create
from jobs.webhooks.tasks import MAX_ATTEMPTS, webhook_deliver


def readme_verifier():
    """The receiver check shown in the README, run as written, so the documented snippet matches the signing."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in readme.split("```python")[1:] if "def verify_webhook" in b).split("```")[0]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    return namespace["verify_webhook"]


verify_webhook = readme_verifier()


def send(delivery_id) -> tuple[dict, bytes]:
    """Run the delivery task with the HTTP call captured; returns the headers and body it sent."""
    with mock.patch("jobs.webhooks.tasks.webhook_post", return_value=204) as post:
        assert webhook_deliver(str(delivery_id)) == "delivered"
    _url, body, headers = post.call_args.args
    return headers, body


def test_create_list_detail_delete_and_the_secret_is_shown_once(api, user):
    response = api.post("/api/v1/webhooks/", {"url": " https://example.com/hook "}, format="json")
    assert response.status_code == 201, response.content
    created = response.json()
    hook = Webhook.objects.get(owner=user)
    assert created == {
        "id": hook.id,
        "url": "https://example.com/hook",
        "active": True,
        "created": created["created"],
        "secret": hook.secret,
    }
    listing = api.get("/api/v1/webhooks/").json()
    assert [w["id"] for w in listing] == [hook.id] and "secret" not in listing[0]
    detail = api.get(f"/api/v1/webhooks/{hook.id}/").json()
    assert detail["url"] == "https://example.com/hook" and "secret" not in detail
    assert api.delete(f"/api/v1/webhooks/{hook.id}/").status_code == 204
    assert not Webhook.objects.exists()
    assert api.get(f"/api/v1/webhooks/{hook.id}/").status_code == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "example.com/hook"}, "url"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": "http://user:pw@example.com/x"}, "url"),
    ],
)
def test_a_bad_url_is_a_400_naming_the_field(api, body, field):
    response = api.post("/api/v1/webhooks/", body, format="json")
    assert response.status_code == 400 and response.json()["error"]["field"] == field, response.content
    assert "http" in response.json()["error"]["message"] or "password" in response.json()["error"]["message"]
    assert not Webhook.objects.exists()


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "url"),
        ({"url": ""}, "url"),
        ({"url": ["https://example.com"]}, "url"),
        ({"url": None}, "url"),
        ({"url": "https://example.com/hook", "secret": "mine"}, "secret"),
        ({"URL": "https://example.com/hook"}, "URL"),
    ],
)
def test_missing_wrongly_typed_and_unknown_fields_are_named(api, body, field):
    response = api.post("/api/v1/webhooks/", body, format="json")
    assert response.status_code == 400 and field in response.json(), response.content
    assert not Webhook.objects.exists()


def test_at_most_ten_webhooks_by_default(api, user):
    for i in range(10):
        webhook_create(owner=user, url=f"https://example.com/{i}")
    response = api.post("/api/v1/webhooks/", {"url": "https://example.com/11"}, format="json")
    assert response.status_code == 429 and response.json()["error"]["field"] == "quota"
    assert response.json()["error"]["limit"] == "webhooks" and response.json()["error"]["allowed"] == 10


def test_another_users_webhook_does_not_exist(api, api_bob, user):
    hook = webhook_create(owner=user, url="https://example.com/hook")
    for method, path in [
        ("get", ""),
        ("delete", ""),
        ("get", "deliveries/"),
        ("post", "test/"),
        ("post", "rotate-secret/"),
    ]:
        response = getattr(api_bob, method)(f"/api/v1/webhooks/{hook.id}/{path}")
        assert response.status_code == 404 and response.json() == {"detail": "No Webhook matches the given query."}
    assert api_bob.get("/api/v1/webhooks/").json() == []
    assert Webhook.objects.get(id=hook.id).secret == hook.secret and not WebhookDelivery.objects.exists()
    assert api.get(f"/api/v1/webhooks/{hook.id}/").status_code == 200


def test_test_ping_is_queued_on_commit_signed_and_listed(api, user, django_capture_on_commit_callbacks):
    hook = webhook_create(owner=user, url="https://example.com/hook")
    with (
        mock.patch("jobs.webhooks.tasks.webhook_deliver.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = api.post(f"/api/v1/webhooks/{hook.id}/test/")
    assert response.status_code == 202, response.content
    queued = response.json()
    assert queued["event"] == "ping" and queued["status"] == "pending" and queued["attempts"] == 0
    delay.assert_called_once_with(queued["id"])

    headers, body = send(queued["id"])
    event = verify_webhook(hook.secret, headers, body)
    assert event["type"] == "ping" and event["data"] == {"webhook": hook.id, "url": hook.url}
    assert event["id"] == headers["webhook-id"] and event["id"].startswith("msg_")
    with pytest.raises(ValueError, match="bad signature"):
        verify_webhook("whsec_" + base64.b64encode(b"x" * 32).decode(), headers, body)

    (delivery,) = api.get(f"/api/v1/webhooks/{hook.id}/deliveries/").json()["results"]
    assert (delivery["id"], delivery["status"], delivery["attempts"], delivery["response_code"]) == (
        queued["id"],
        "delivered",
        1,
        204,
    )
    assert delivery["payload"] == event


def test_deliveries_show_status_attempts_and_response_code_newest_first(api, user):
    hook = webhook_create(owner=user, url="https://example.com/hook")
    for fields in (
        {"delivered": True, "attempts": 1, "status_code": 200},
        {"attempts": 2, "status_code": 500, "last_error": "HTTP 500"},
        {"attempts": MAX_ATTEMPTS, "last_error": "ConnectionError: refused"},
    ):
        WebhookDelivery.objects.create(webhook=hook, event="fine_tuning.job.failed", payload={"id": "msg_x"}, **fields)
    page = api.get(f"/api/v1/webhooks/{hook.id}/deliveries/?page_size=2").json()
    assert [(d["status"], d["attempts"], d["response_code"]) for d in page["results"]] == [
        ("failed", MAX_ATTEMPTS, None),
        ("pending", 2, 500),
    ]
    assert page["results"][1]["last_error"] == "HTTP 500" and page["next"]
    rest = api.get(page["next"]).json()
    assert [(d["status"], d["response_code"]) for d in rest["results"]] == [("delivered", 200)] and not rest["next"]


def test_rotating_the_secret_returns_the_new_one_and_signs_with_it(api, user):
    hook = webhook_create(owner=user, url="https://example.com/hook")
    old = hook.secret
    response = api.post(f"/api/v1/webhooks/{hook.id}/rotate-secret/")
    assert response.status_code == 200
    new = response.json()["secret"]
    assert new.startswith("whsec_") and new != old and Webhook.objects.get(id=hook.id).secret == new
    with mock.patch("jobs.webhooks.tasks.webhook_deliver.delay"):
        delivery_id = api.post(f"/api/v1/webhooks/{hook.id}/test/").json()["id"]
    headers, body = send(delivery_id)
    verify_webhook(new, headers, body)
    with pytest.raises(ValueError):
        verify_webhook(old, headers, body)


def test_an_inactive_webhook_cannot_be_pinged(api, user):
    hook = webhook_create(owner=user, url="https://example.com/hook")
    Webhook.objects.filter(id=hook.id).update(active=False)
    response = api.post(f"/api/v1/webhooks/{hook.id}/test/")
    assert response.status_code == 400 and response.json()["error"]["field"] == "webhook"


def test_session_writes_need_the_csrf_token(user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    hook = webhook_create(owner=user, url="https://example.com/hook")
    assert client.get("/api/v1/webhooks/").status_code == 200
    refused = [
        client.post("/api/v1/webhooks/", {"url": "https://example.com/2"}, format="json"),
        client.delete(f"/api/v1/webhooks/{hook.id}/"),
        client.post(f"/api/v1/webhooks/{hook.id}/test/"),
        client.post(f"/api/v1/webhooks/{hook.id}/rotate-secret/"),
    ]
    for response in refused:
        assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    assert Webhook.objects.get().secret == hook.secret and not WebhookDelivery.objects.exists()

    token = "a" * 32
    client.cookies[settings.CSRF_COOKIE_NAME] = token
    response = client.post("/api/v1/webhooks/", {"url": "https://example.com/2"}, format="json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201
    assert client.delete(f"/api/v1/webhooks/{hook.id}/", HTTP_X_CSRFTOKEN=token).status_code == 204


def test_anonymous_requests_are_refused(db):
    client = APIClient()
    assert client.get("/api/v1/webhooks/").status_code in (401, 403)
    assert client.post("/api/v1/webhooks/", {"url": "https://example.com"}, format="json").status_code in (401, 403)
