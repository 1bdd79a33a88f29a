"""Celery task that sends one webhook delivery, signed, retried with exponential backoff."""
from __future__ import annotations

import json
import logging
import time

import requests
from celery import shared_task
from django.db.models import F

from common import queue
from webhooks.models import MAX_ATTEMPTS, WebhookDelivery
from webhooks.signing import webhook_signature

log = logging.getLogger(__name__)

TIMEOUT_S = 10
BACKOFF_BASE_S = 30  # 30 s, 1 min, 2 min, 4 min between the five attempts


class DeliveryFailed(Exception):
    """The endpoint did not answer 2xx (status_code) or could not be reached (status_code None)."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


def webhook_backoff(attempt: int) -> int:
    """Seconds to wait after failed attempt number `attempt` (1-based)."""
    return BACKOFF_BASE_S * 2 ** (attempt - 1)


def webhook_send(delivery: WebhookDelivery) -> int:
    """POST the delivery once; returns the status code, raises DeliveryFailed unless 2xx."""
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    msg_id, timestamp = delivery.payload["id"], int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": "LoRA-Studio-Webhooks/1",
               "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": webhook_signature(delivery.webhook.secret, msg_id, timestamp, body)}
    try:
        # A redirect could point the signed event at another host: a 3xx counts as a failure.
        response = requests.post(delivery.webhook.url, data=body, headers=headers, timeout=TIMEOUT_S,
                                 allow_redirects=False)
    except requests.RequestException as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}"[:500]) from None
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"HTTP {response.status_code}", response.status_code)
    return response.status_code


@shared_task(name=queue.WEBHOOK_DELIVER, bind=True, max_retries=MAX_ATTEMPTS - 1, acks_late=True)
def webhook_deliver(self, delivery_id: str) -> str:
    """Send one delivery; on failure record why and retry later, up to MAX_ATTEMPTS in all."""
    delivery = WebhookDelivery.objects.select_related("webhook").filter(id=delivery_id, delivered=False).first()
    if delivery is None:
        return "skipped"
    if not delivery.webhook.active:
        return "inactive"
    WebhookDelivery.objects.filter(id=delivery.id).update(attempts=F("attempts") + 1)
    delivery.refresh_from_db(fields=["attempts"])
    try:
        code = webhook_send(delivery)
    except DeliveryFailed as exc:
        WebhookDelivery.objects.filter(id=delivery.id).update(last_error=str(exc), status_code=exc.status_code)
        if delivery.attempts >= MAX_ATTEMPTS:
            log.warning("webhook delivery %s gave up after %d attempts: %s", delivery.id, delivery.attempts, exc)
            return "failed"
        raise self.retry(countdown=webhook_backoff(delivery.attempts), exc=exc)
    WebhookDelivery.objects.filter(id=delivery.id).update(delivered=True, status_code=code, last_error="")
    return "delivered"
