"""A webhook attempt is bounded: a total deadline however slowly the endpoint trickles its answer,
at most ANSWER_MAX_BYTES of the answer read; and the sweep re-queues deliveries whose message was lost."""

import datetime as dt
import http.client
import http.server
import threading
import time
from unittest import mock

import pytest
from django.utils import timezone

from jobs.webhooks.models import MAX_ATTEMPTS, Webhook, WebhookDelivery
from jobs.webhooks.services import webhook_create, webhook_ping
from jobs.webhooks.tasks import (
    ANSWER_MAX_BYTES,
    SWEEP_GRACE_S,
    DeliveryFailed,
    webhook_backoff,
    webhook_deliver,
    webhook_sweep,
)
from tests.local_http import local_http_server

DEADLINE_S = 2
SLACK_S = 1.0


class SlowEndpoint(http.server.BaseHTTPRequestHandler):
    """Reads the request, then answers according to `mode`:
    `status`: trickles the status line a byte at a time, `body`: sends the headers and trickles the body,
    `endless`: 200 and a body that never ends, sent as fast as the client reads."""

    mode = "status"
    sent: list[int] = []
    closed = threading.Event()

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        sent = 0
        try:
            if self.mode == "status":
                for byte in b"HTTP/1.1 200 OK\r\n" * 100:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    sent += 1
                    time.sleep(0.2)
            elif self.mode == "body":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.flush()
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    sent += 1
                    time.sleep(0.2)
            else:
                self.send_response(200)
                self.send_header("Connection", "close")  # no length: the body runs until the connection ends
                self.end_headers()
                block = b"y" * 65536
                for _ in range(10_000):  # 640 MB: far more than any reader should take
                    self.wfile.write(block)
                    sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.sent.append(sent)
            self.closed.set()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_endpoint(allow_local):
    SlowEndpoint.sent = []
    SlowEndpoint.closed = threading.Event()
    with local_http_server(SlowEndpoint) as url:
        yield url + "/hook"


@pytest.fixture
def short_deadline(settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = DEADLINE_S


def ping(user, url) -> WebhookDelivery:
    with mock.patch("jobs.webhooks.tasks.webhook_deliver.delay"):
        return webhook_ping(webhook=webhook_create(owner=user, url=url))


def job_event(user, url) -> WebhookDelivery:
    """A job event's delivery (retried up to MAX_ATTEMPTS, unlike a ping), not sent yet."""
    hook = webhook_create(owner=user, url=url)
    return WebhookDelivery.objects.create(webhook=hook, event="fine_tuning.job.failed", payload={"id": "msg_x"})


@pytest.mark.parametrize("mode", ["status", "body"])
def test_a_trickling_endpoint_fails_the_attempt_at_the_deadline(user, slow_endpoint, short_deadline, mode):
    SlowEndpoint.mode = mode
    delivery = job_event(user, slow_endpoint)
    started = time.monotonic()
    # Called directly, Celery's self.retry re-raises the failure instead of scheduling the retry.
    with mock.patch.object(webhook_deliver, "retry", wraps=webhook_deliver.retry) as retry:
        with pytest.raises(DeliveryFailed):
            webhook_deliver(str(delivery.id))
    elapsed = time.monotonic() - started
    assert DEADLINE_S - 0.2 <= elapsed <= DEADLINE_S + SLACK_S, elapsed
    assert retry.call_args.kwargs["countdown"] == webhook_backoff(1)  # the usual backoff: retried later
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.delivered, delivery.state) == (1, False, "pending")
    assert delivery.last_error == f"timeout: no complete answer within {DEADLINE_S} s" and delivery.status_code is None
    assert SlowEndpoint.closed.wait(5), "the endpoint's connection was hung up on"
    assert 0 < SlowEndpoint.sent[0] < (100 * 17 if mode == "status" else 1000)


def test_a_test_ping_gets_one_attempt_and_fails_at_once(user, slow_endpoint, short_deadline):
    """A ping is a test button: its one attempt ends at the deadline and shows `failed`, with no retry queued."""
    SlowEndpoint.mode = "status"
    delivery = ping(user, slow_endpoint)
    started = time.monotonic()
    with mock.patch.object(webhook_deliver, "retry") as retry:
        assert webhook_deliver(str(delivery.id)) == "failed"
    assert time.monotonic() - started <= DEADLINE_S + SLACK_S
    retry.assert_not_called()
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.delivered, delivery.state) == (1, False, "failed")
    assert delivery.last_error == f"timeout: no complete answer within {DEADLINE_S} s"
    # A second message for it (a redelivery) sends nothing: its one attempt is spent.
    with mock.patch("jobs.webhooks.tasks.webhook_post") as post:
        assert webhook_deliver(str(delivery.id)) == "failed"
    post.assert_not_called()


def test_an_endless_answer_is_read_up_to_the_cap_only(user, slow_endpoint, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 10
    SlowEndpoint.mode = "endless"
    delivery = job_event(user, slow_endpoint)
    read = []
    original = http.client.HTTPResponse.read

    def counting_read(self, amt=None):
        data = original(self, amt)
        read.append(len(data))
        return data

    started = time.monotonic()
    with mock.patch.object(http.client.HTTPResponse, "read", counting_read):
        assert webhook_deliver(str(delivery.id)) == "delivered"
    assert time.monotonic() - started < 3  # hung up at the cap, not at the deadline
    assert sum(read) == ANSWER_MAX_BYTES
    assert SlowEndpoint.closed.wait(5)
    assert SlowEndpoint.sent[0] < 10_000 * 65536  # the endpoint was cut off long before its end
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.delivered, delivery.status_code, delivery.last_error) == (1, True, 200, "")


# --- the sweep -------------------------------------------------------------------------------------


def delivery_at(hook, *, attempts=0, age_s: float, **fields) -> WebhookDelivery:
    fields.setdefault("event", "fine_tuning.job.succeeded")
    delivery = WebhookDelivery.objects.create(webhook=hook, payload={"id": "msg_x"}, attempts=attempts, **fields)
    # `updated` is auto_now on save(); update() sets the age the sweep reads.
    WebhookDelivery.objects.filter(id=delivery.id).update(updated=timezone.now() - dt.timedelta(seconds=age_s))
    return delivery


def test_the_sweep_requeues_only_deliveries_whose_message_was_lost(user, settings):
    hook = webhook_create(owner=user, url="https://example.com/hook")
    late = SWEEP_GRACE_S + settings.WEBHOOK_TIMEOUT_SECONDS + 5
    lost_first = delivery_at(hook, age_s=late)
    lost_retry = delivery_at(hook, attempts=2, age_s=webhook_backoff(2) + late)
    delivery_at(hook, age_s=60)  # just queued: its message is still on its way
    delivery_at(hook, attempts=2, age_s=late)  # waiting for its backoff (60 s) + grace: not lost yet
    delivery_at(hook, attempts=1, age_s=10 * late, delivered=True)
    delivery_at(hook, attempts=MAX_ATTEMPTS, age_s=10 * late)  # given up
    delivery_at(hook, event="ping", attempts=1, age_s=10 * late)  # a ping's one attempt was made: nothing owed
    inactive = Webhook.objects.create(owner=user, url="https://example.com/off", active=False)
    delivery_at(inactive, age_s=10 * late)
    with mock.patch("jobs.webhooks.tasks.webhook_deliver.delay") as delay:
        assert webhook_sweep() == 2
        assert sorted(c.args[0] for c in delay.call_args_list) == sorted([str(lost_first.id), str(lost_retry.id)])
        # A second sweep at once sends nothing again: the first one stamped what it re-queued.
        assert webhook_sweep() == 0
        assert delay.call_count == 2


def test_a_swept_delivery_is_sent_with_the_retry_count_kept(user):
    hook = webhook_create(owner=user, url="https://example.com/hook")
    delivery = delivery_at(hook, attempts=3, age_s=webhook_backoff(3) + SWEEP_GRACE_S + 60)
    with mock.patch("jobs.webhooks.tasks.webhook_deliver.delay", side_effect=lambda i: webhook_deliver(i)):
        with mock.patch("jobs.webhooks.tasks.webhook_post", return_value=200):
            assert webhook_sweep() == 1
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.delivered, delivery.state) == (4, True, "delivered")
