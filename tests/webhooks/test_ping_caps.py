"""Test pings are capped: one in flight per webhook and WEBHOOK_PINGS_IN_FLIGHT_PER_USER across a user's
webhooks; more is a 429 with Retry-After (REST) or a plain message (page), never a queued ping."""

import datetime as dt
from unittest import mock

import pytest
from django.utils import timezone

from jobs.webhooks.models import PING_START_GRACE_S, WebhookDelivery, ping_window
from jobs.webhooks.services import webhook_create
from jobs.webhooks.tasks import PING_TOO_LATE, webhook_deliver


@pytest.fixture(autouse=True)
def no_sending():
    """Pings are queued (on commit) but not sent: they stay in flight until a test ends them."""
    with mock.patch("jobs.webhooks.tasks.webhook_deliver.delay") as delay:
        yield delay


def ping(api, hook):
    return api.post(f"/api/v1/webhooks/{hook.id}/test/")


def test_a_second_ping_to_a_webhook_waits_for_the_first(api, user, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 15
    hook = webhook_create(owner=user, url="https://example.com/hook")
    first = ping(api, hook)
    assert first.status_code == 202, first.content
    refused = ping(api, hook)
    assert refused.status_code == 429 and refused["Retry-After"] == "16"
    assert refused.json() == {
        "error": {
            "field": "webhook",
            "message": "a test ping to this webhook is still being sent; try again in 16 s",
            "retry_after": 16,
        }
    }
    assert WebhookDelivery.objects.filter(webhook=hook).count() == 1
    # Once the first is answered (or has failed), the next one goes.
    WebhookDelivery.objects.filter(id=first.json()["id"]).update(last_error="HTTP 500", attempts=1)
    assert ping(api, hook).status_code == 202


def test_a_ping_whose_message_was_lost_stops_counting_after_its_window(api, user):
    hook = webhook_create(owner=user, url="https://example.com/hook")
    lost = ping(api, hook).json()["id"]
    assert ping(api, hook).status_code == 429
    WebhookDelivery.objects.filter(id=lost).update(created=timezone.now() - ping_window() - dt.timedelta(seconds=1))
    assert api.get(f"/api/v1/webhooks/{hook.id}/deliveries/").json()["results"][0]["status"] == "failed"
    assert ping(api, hook).status_code == 202


def test_a_user_has_a_few_pings_in_flight_across_their_webhooks(api, api_bob, user, other_user, settings):
    settings.WEBHOOK_PINGS_IN_FLIGHT_PER_USER = 2
    hooks = [webhook_create(owner=user, url=f"https://example.com/{i}") for i in range(3)]
    assert [ping(api, h).status_code for h in hooks[:2]] == [202, 202]
    refused = ping(api, hooks[2])
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
    message = refused.json()["error"]["message"]
    assert message.startswith("2 test pings to your webhooks are still being sent (setting WEBHOOK_PINGS_IN_FLIGHT")
    # Someone else's pings are theirs: bob is not held up by alice.
    assert ping(api_bob, webhook_create(owner=other_user, url="https://example.com/bob")).status_code == 202
    delivered = WebhookDelivery.objects.filter(webhook=hooks[0]).get()
    WebhookDelivery.objects.filter(id=delivered.id).update(delivered=True, attempts=1, status_code=204)
    assert ping(api, hooks[2]).status_code == 202


def test_the_page_says_a_ping_is_still_being_sent(client_in, user, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 15
    hook = webhook_create(owner=user, url="https://example.com/hook")
    assert client_in.post(f"/account/webhooks/{hook.id}/test/").status_code == 302
    response = client_in.post(f"/account/webhooks/{hook.id}/test/", follow=True)
    assert response.status_code == 200
    page = response.content.decode()
    assert "A test ping to this webhook is still being sent; try again in 16 s." in page
    assert "a test event is sent once, one at a time per webhook" in page
    assert WebhookDelivery.objects.filter(webhook=hook).count() == 1


def test_a_ping_that_waited_too_long_for_the_worker_is_not_sent(user):
    """Past PING_START_GRACE_S its owner may have sent another: sending it late would make two in flight."""
    hook = webhook_create(owner=user, url="https://example.com/hook")
    delivery = WebhookDelivery.objects.create(webhook=hook, event="ping", payload={"id": "msg_x"})
    old = timezone.now() - dt.timedelta(seconds=PING_START_GRACE_S + 1)
    WebhookDelivery.objects.filter(id=delivery.id).update(created=old)
    with mock.patch("jobs.webhooks.tasks.webhook_post") as post:
        assert webhook_deliver(str(delivery.id)) == "failed"
    post.assert_not_called()
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.last_error, delivery.state) == (0, PING_TOO_LATE, "failed")
