"""Webhooks: URL validation, ownership, one delivery per webhook when a job ends, and a signed delivery
that is retried after a failure against a real local HTTP receiver."""

import base64
import hashlib
import hmac
import http.server
import json
import threading
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.datasets.services import dataset_create
from jobs.training.models import JobStatus
from jobs.training.plan import job_plan
from jobs.training.services import job_create, job_mark
from jobs.webhooks.models import WebhookDelivery
from jobs.webhooks.services import webhook_create
from jobs.webhooks.tasks import DeliveryFailed, webhook_deliver
from tests.factories import chat_jsonl
from tests.local_http import local_http_server
from worker.config import TrainConfig
from worker.errors import InputError


class Receiver(http.server.BaseHTTPRequestHandler):
    """Answers 500 to the first POST and 200 afterwards, keeping what it received."""

    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append({"headers": dict(self.headers), "body": body})
        self.send_response(500 if len(self.received) == 1 else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver(allow_local):
    Receiver.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", Receiver.received
    server.shutdown()
    server.server_close()


def signature_ok(secret: str, headers: dict, body: bytes) -> bool:
    """A receiver's check, written from the Standard Webhooks spec rather than the app's code."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(f"v1,{expected}", sig) for sig in headers["webhook-signature"].split())


@pytest.fixture
def job(user, base_model):
    ds = dataset_create(owner=user, upload=SimpleUploadedFile("colours.jsonl", chat_jsonl()), name="colours")
    with mock.patch("jobs.training.tasks.job_run.delay"):
        return job_create(plan=job_plan(owner=user, dataset=ds, base_model=base_model, config=TrainConfig()))


@pytest.mark.parametrize(
    "url",
    [
        "",
        "example.com/hook",
        "ftp://example.com/x",
        "javascript:alert(1)",
        "http://user:pw@example.com/x",
        "http:///nohost",
    ],
)
def test_only_absolute_http_urls_are_accepted(user, url):
    with pytest.raises(InputError) as err:
        webhook_create(owner=user, url=url)
    assert err.value.field == "url"


def test_a_new_webhook_gets_a_random_secret(user):
    first = webhook_create(owner=user, url=" https://example.com/hook ")
    second = webhook_create(owner=user, url="http://hooks.example.org:8080/x")
    assert first.url == "https://example.com/hook"
    assert first.secret.startswith("whsec_") and len(base64.b64decode(first.secret[6:])) == 32
    assert first.secret != second.secret


def test_page_adds_shows_and_deletes_only_your_own(client, user, other_user):
    client.force_login(user)
    assert client.post("/account/webhooks/", {"url": "not a url"}).status_code == 400
    added = client.post("/account/webhooks/", {"url": "https://example.com/hook"})
    hook = user.webhooks.get()
    # The secret is shown once, in the answer that made it, never on a later visit.
    assert added.status_code == 201 and added["Cache-Control"] == "no-store"
    assert hook.secret in added.content.decode()
    page = client.get("/account/webhooks/").content.decode()
    assert "https://example.com/hook" in page and hook.secret not in page
    client.force_login(other_user)
    assert f"/account/webhooks/{hook.id}/" not in client.get("/account/webhooks/").content.decode()
    assert client.post(f"/account/webhooks/{hook.id}/delete/").status_code == 404
    assert client.post(f"/account/webhooks/{hook.id}/rotate-secret/").status_code == 404
    assert user.webhooks.get().secret == hook.secret
    assert user.webhooks.exists()
    client.force_login(user)
    assert client.post(f"/account/webhooks/{hook.id}/delete/").status_code == 302
    assert not user.webhooks.exists()


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_a_job_ending_queues_one_delivery_per_active_webhook(
    user, other_user, job, status, django_capture_on_commit_callbacks
):
    webhook_create(owner=user, url="https://a.example/hook")
    webhook_create(owner=user, url="https://b.example/hook")
    inactive = webhook_create(owner=user, url="https://c.example/hook")
    inactive.active = False
    inactive.save()
    webhook_create(owner=other_user, url="https://bob.example/hook")
    with mock.patch("jobs.webhooks.tasks.webhook_deliver.delay") as delay:
        with django_capture_on_commit_callbacks(execute=True):
            job_mark(job_id=job.id, status=JobStatus.RUNNING)
        assert not delay.called and not WebhookDelivery.objects.exists()
        with django_capture_on_commit_callbacks(execute=True):
            job_mark(job_id=job.id, status=status, error="boom" if status == JobStatus.FAILED else "")
    deliveries = WebhookDelivery.objects.all()
    assert {d.webhook.url for d in deliveries} == {"https://a.example/hook", "https://b.example/hook"}
    assert sorted(c.args[0] for c in delay.call_args_list) == sorted(str(d.id) for d in deliveries)
    payload = deliveries[0].payload
    assert payload["type"] == f"fine_tuning.job.{status}" and deliveries[0].event == payload["type"]
    assert payload["data"]["id"] == f"ftjob-{job.id.hex}" and payload["data"]["status"] == status
    assert payload["id"].startswith("msg_") and isinstance(payload["created_at"], int)


def test_delivery_is_signed_and_retried_until_the_receiver_accepts_it(
    user, job, receiver, django_capture_on_commit_callbacks
):
    url, received = receiver
    hook = webhook_create(owner=user, url=url)
    with mock.patch("jobs.webhooks.tasks.webhook_deliver.delay"), django_capture_on_commit_callbacks(execute=True):
        job_mark(job_id=job.id, status=JobStatus.SUCCEEDED, final_loss=0.5)
    delivery = WebhookDelivery.objects.get()
    # Called directly, Celery's self.retry re-raises the failure instead of scheduling the retry.
    with mock.patch.object(webhook_deliver, "retry", wraps=webhook_deliver.retry) as retry:
        with pytest.raises(DeliveryFailed):
            webhook_deliver(str(delivery.id))
    assert retry.call_args.kwargs["countdown"] > 0
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.delivered, delivery.status_code, delivery.last_error) == (
        1,
        False,
        500,
        "HTTP 500",
    )
    assert webhook_deliver(str(delivery.id)) == "delivered"
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.delivered, delivery.status_code, delivery.last_error) == (2, True, 200, "")
    assert len(received) == 2
    for request in received:
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert signature_ok(hook.secret, headers, request["body"])
        assert not signature_ok("whsec_" + base64.b64encode(b"x" * 32).decode(), headers, request["body"])
        assert headers["webhook-id"] == delivery.payload["id"] and headers["content-type"] == "application/json"
        event = json.loads(request["body"])
        assert event["type"] == "fine_tuning.job.succeeded" and event["data"]["final_loss"] == 0.5
    assert webhook_deliver(str(delivery.id)) == "skipped"  # a delivered event is never sent twice


class Redirecting(http.server.BaseHTTPRequestHandler):
    """Answers 302 to /hook, pointing at /elsewhere, and records every path asked for."""

    paths: list[str] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.paths.append(self.path)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(302 if self.path == "/hook" else 200)
        self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST  # noqa: N815

    def log_message(self, *args):
        pass


def test_a_redirect_is_a_failure_not_followed(user, job, allow_local, django_capture_on_commit_callbacks):
    Redirecting.paths = []
    with local_http_server(Redirecting) as url:
        hook = webhook_create(owner=user, url=f"{url}/hook")
        with mock.patch("jobs.webhooks.tasks.webhook_deliver.delay"), django_capture_on_commit_callbacks(execute=True):
            job_mark(job_id=job.id, status=JobStatus.CANCELLED)
        delivery = WebhookDelivery.objects.get(webhook=hook)
        with pytest.raises(DeliveryFailed):
            webhook_deliver(str(delivery.id))
    assert Redirecting.paths == ["/hook"]
    delivery.refresh_from_db()
    assert delivery.status_code == 302 and not delivery.delivered and delivery.last_error == "HTTP 302"


def test_gives_up_after_five_attempts(user, job, allow_local, django_capture_on_commit_callbacks):
    webhook_create(owner=user, url="http://127.0.0.1:9/unreachable")
    with mock.patch("jobs.webhooks.tasks.webhook_deliver.delay"), django_capture_on_commit_callbacks(execute=True):
        job_mark(job_id=job.id, status=JobStatus.FAILED, error="x")
    delivery = WebhookDelivery.objects.get()
    for _ in range(4):
        with pytest.raises(DeliveryFailed):
            webhook_deliver(str(delivery.id))
    assert webhook_deliver(str(delivery.id)) == "failed"
    delivery.refresh_from_db()
    assert delivery.attempts == 5 and not delivery.delivered and delivery.status_code is None
    assert delivery.last_error == "connection refused"  # a category, never the exception's text
    assert webhook_deliver(str(delivery.id)) == "failed"  # a late duplicate message never makes a sixth attempt
    delivery.refresh_from_db()
    assert delivery.attempts == 5


def test_cancelling_a_queued_job_also_sends_the_event(user, job, django_capture_on_commit_callbacks):
    from jobs.training.services import job_cancel

    webhook_create(owner=user, url="https://a.example/hook")
    with mock.patch("jobs.webhooks.tasks.webhook_deliver.delay") as delay:
        with django_capture_on_commit_callbacks(execute=True):
            job_cancel(job=job, by=user)
    delivery = WebhookDelivery.objects.get()
    assert delivery.event == "fine_tuning.job.cancelled" and delay.call_count == 1


def test_the_page_sends_a_test_event_to_ones_own_webhook_only(client, user, other_user):
    mine = webhook_create(owner=user, url="https://mine.example/hook")
    theirs = webhook_create(owner=other_user, url="https://theirs.example/hook")
    client.force_login(user)
    assert f'action="/account/webhooks/{mine.id}/test/"' in client.get("/account/webhooks/").content.decode()
    with mock.patch("jobs.common.queue.enqueue") as enqueue:
        response = client.post(f"/account/webhooks/{mine.id}/test/", follow=True)
        assert client.post(f"/account/webhooks/{theirs.id}/test/").status_code == 404
    assert "Sent a test event to https://mine.example/hook" in response.content.decode()
    delivery = WebhookDelivery.objects.get(webhook=mine)
    assert delivery.event == "ping" and enqueue.call_count == 1
    assert not WebhookDelivery.objects.filter(webhook=theirs).exists()


def test_the_page_opens_with_one_plain_sentence_and_folds_the_signing_details(client, user):
    client.force_login(user)
    html = client.get("/account/webhooks/").content.decode()
    intro = html.index('<p id="webhooks-intro">A webhook tells another program when one of your jobs ends')
    details = html.index('<details id="webhooks-details"><summary>')  # closed: no "open"
    assert intro < details < html.index("HMAC-SHA256") and "HMAC" not in html[:details]
