"""Celery tasks of the background queue for webhooks: send one delivery (signed, retried with
exponential backoff, each attempt bounded in time and in what it reads), and the sweep that
re-queues deliveries whose message was lost."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import socket
import threading
import time

from celery import shared_task
from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from jobs.common import queue
from jobs.common.outbound import TIMEOUT, OutboundError, Resolver, failure_category, outbound_connection
from jobs.common.shares import DELIVERIES, owner_share
from jobs.webhooks.models import MAX_ATTEMPTS, PING_EVENT, PING_START_GRACE_S, WebhookDelivery
from jobs.webhooks.signing import webhook_signature

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 30  # 30 s, 1 min, 2 min, 4 min between the five attempts
ANSWER_MAX_BYTES = 64 * 1024  # what a receiver says back is not needed: read this much at most, then hang up
PING_TOO_LATE = "not sent: the background worker was too busy to send it in time; send another test"
SWEEP_GRACE_S = 300  # past its backoff, how long a delivery may sit untouched before the sweep sends it again


class DeliveryFailed(Exception):
    """The endpoint did not answer 2xx (status_code) or could not be reached (status_code None); the
    message is a category a user may see ("HTTP 503", "timeout", "refused: port not allowed"), never
    an exception's text."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


def webhook_backoff(attempt: int) -> int:
    """Seconds to wait after failed attempt number `attempt` (1-based)."""
    return BACKOFF_BASE_S * 2 ** (attempt - 1)


def webhook_post(
    url: str, body: bytes, headers: dict[str, str], *, deadline_s: float, resolver: Resolver | None = None
) -> int:
    """POST `body` and read at most ANSWER_MAX_BYTES of the answer, all within `deadline_s` seconds;
    returns the status code, raises DeliveryFailed (with a category a user may see, e.g. "timeout",
    "refused: private address") when the endpoint may not or cannot be reached or runs late.

    The host is resolved and vetted first and the connection goes to a vetted address only
    (jobs.common.outbound): no private, loopback or otherwise non-public target unless WEBHOOK_ALLOWED_HOSTS
    says so. Socket timeouts bound each read, not the exchange: an endpoint that trickles a byte every
    few seconds would hold the worker for ever. So a timer shuts the socket down at the deadline, in
    whatever stage the exchange is (connect, TLS handshake, sending, status line, headers, body).
    Redirects are not followed (http.client never does): a 3xx could point the signed event elsewhere.
    """
    started = time.monotonic()
    timed_out = f"{TIMEOUT}: no complete answer within {deadline_s:g} s"
    try:
        conn, path = outbound_connection(url, timeout=deadline_s, resolver=resolver)
    except OutboundError as exc:
        log.warning("webhook to %s not sent: %s (%s)", url, exc.category, exc.detail)
        raise DeliveryFailed(exc.category) from None
    left_s = deadline_s - (time.monotonic() - started)  # a slow resolver counts against the deadline
    if left_s <= 0:
        log.warning("webhook to %s not sent: resolving took %.1f s", url, time.monotonic() - started)
        raise DeliveryFailed(timed_out)
    conn.timeout = left_s
    expired = threading.Event()
    connected: list[socket.socket] = []  # http.client drops conn.sock once a closing answer has begun

    def hang_up():
        expired.set()
        sock = conn.sock or (connected[0] if connected else None)
        if sock is not None:
            try:  # the plain socket's shutdown: safe from another thread, and it wakes a blocked read
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(left_s, hang_up)
    timer.daemon = True
    timer.start()
    try:
        conn.connect()
        connected.append(conn.sock)
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        read = 0
        while read < ANSWER_MAX_BYTES:
            chunk = response.read(min(8192, ANSWER_MAX_BYTES - read))
            if not chunk:
                break
            read += len(chunk)
        if expired.is_set():  # the answer was cut short by the deadline, not finished
            raise TimeoutError
        return response.status
    except (OSError, http.client.HTTPException) as exc:
        category = timed_out if expired.is_set() or isinstance(exc, TimeoutError) else failure_category(exc)
        log.warning("webhook POST to %s failed: %s (%s: %s)", url, category, type(exc).__name__, exc)
        raise DeliveryFailed(category) from None
    finally:
        timer.cancel()
        conn.close()


def webhook_send(delivery: WebhookDelivery) -> int:
    """POST the delivery once; returns the status code, raises DeliveryFailed unless 2xx."""
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    msg_id, timestamp = delivery.payload["id"], int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "LoRA-Studio-Webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhook_signature(delivery.webhook.secret, msg_id, timestamp, body),
    }
    code = webhook_post(delivery.webhook.url, body, headers, deadline_s=settings.WEBHOOK_TIMEOUT_SECONDS)
    if not 200 <= code < 300:
        raise DeliveryFailed(f"HTTP {code}", code)
    return code


@shared_task(name=queue.WEBHOOK_DELIVER, bind=True, max_retries=MAX_ATTEMPTS - 1, acks_late=True)
def webhook_deliver(self, delivery_id: str) -> str:
    """Send one delivery; on failure record why and retry later, up to its max_attempts in all (a test ping
    gets one). Runs within the owner's share of deliveries (jobs.common.shares)."""
    delivery = WebhookDelivery.objects.select_related("webhook").filter(id=delivery_id, delivered=False).first()
    if delivery is None:
        return "skipped"
    if not delivery.webhook.active:
        return "inactive"
    with owner_share(DELIVERIES, delivery.webhook.owner_id):
        return _deliver(self, delivery)


def _deliver(task, delivery: WebhookDelivery) -> str:
    if delivery.event == PING_EVENT and timezone.now() - delivery.created > dt.timedelta(seconds=PING_START_GRACE_S):
        # Its answer is no longer awaited, and the owner may have sent another: not sent (so at most one is).
        WebhookDelivery.objects.filter(id=delivery.id, attempts=0).update(
            last_error=PING_TOO_LATE, updated=timezone.now()
        )
        return "failed"
    # Counting the attempt is the claim: a message sent twice (the sweep, a redelivery) never makes a sixth.
    # `updated` is auto_now, which QuerySet.update() leaves alone: it is set by hand, as the sweep reads it.
    if not WebhookDelivery.objects.filter(id=delivery.id, attempts__lt=delivery.max_attempts).update(
        attempts=F("attempts") + 1, updated=timezone.now()
    ):
        return "failed"
    delivery.refresh_from_db(fields=["attempts"])
    try:
        code = webhook_send(delivery)
    except DeliveryFailed as exc:
        WebhookDelivery.objects.filter(id=delivery.id).update(
            last_error=str(exc), status_code=exc.status_code, updated=timezone.now()
        )
        if delivery.attempts >= delivery.max_attempts:
            log.warning("webhook delivery %s gave up after %d attempts: %s", delivery.id, delivery.attempts, exc)
            return "failed"
        raise task.retry(countdown=webhook_backoff(delivery.attempts), exc=exc) from exc
    WebhookDelivery.objects.filter(id=delivery.id).update(
        delivered=True, status_code=code, last_error="", updated=timezone.now()
    )
    return "delivered"


def overdue_deliveries(now: dt.datetime):
    """Deliveries still owed (not delivered, attempts left, webhook active) that nobody has touched for
    longer than their backoff plus a grace period: their message is gone (a broker restart, a lost
    retry), since a live one would have run by now."""
    late = Q()
    for attempts in range(MAX_ATTEMPTS):
        wait = (webhook_backoff(attempts) if attempts else 0) + settings.WEBHOOK_TIMEOUT_SECONDS + SWEEP_GRACE_S
        late |= Q(attempts=attempts, updated__lt=now - dt.timedelta(seconds=wait))
    # A ping has one attempt: once made, there is nothing to send again.
    tried_pings = Q(event=PING_EVENT, attempts__gte=1)
    return WebhookDelivery.objects.filter(late, delivered=False, webhook__active=True).exclude(tried_pings)


@shared_task(name=queue.SWEEP_WEBHOOKS, acks_late=True)
def webhook_sweep() -> int:
    """Queue again the deliveries whose message was lost; returns how many. Each is claimed by moving
    its `updated` stamp, so a second sweep (at once, or running alongside) sends nothing twice."""
    now = timezone.now()
    count = 0
    for delivery_id, updated in overdue_deliveries(now).values_list("id", "updated"):
        if WebhookDelivery.objects.filter(id=delivery_id, updated=updated).update(updated=now) == 1:
            queue.send(queue.WEBHOOK_DELIVER, str(delivery_id))
            count += 1
    if count:
        log.info("re-queued %d lost webhook deliver%s", count, "y" if count == 1 else "ies")
    return count
