"""Writes for webhooks (Standard Webhooks style): keyword-only functions that validate, write in a
transaction and queue the network calls on commit (jobs.webhooks.tasks.webhook_deliver)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.utils import timezone

from jobs.accounts.limits import check_limit
from jobs.common import queue
from jobs.common.exceptions import Busy
from jobs.common.ids import ftjob_id
from jobs.common.outbound import REFUSED_PORT, REFUSED_URL, OutboundPolicy, registration_refusal
from jobs.training.models import TERMINAL_STATUSES, FineTuneJob
from jobs.webhooks.models import PING_EVENT, Webhook, WebhookDelivery, ping_window, pings_in_flight, webhook_secret_new
from worker.errors import InputError

EVENT_TYPES = {status.value: f"fine_tuning.job.{status.value}" for status in TERMINAL_STATUSES}


def webhook_url_validate(url: str) -> str:
    """The URL stripped, or InputError("url", ...) unless it is an absolute http(s) URL on an allowed
    port whose host is not an internal IP address (a host name is checked again at each delivery, as its
    DNS can change: jobs.common.outbound)."""
    url = (url or "").strip()
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise InputError("url", "must be an absolute http:// or https:// URL") from None
    if parts.scheme in ("http", "https") and (parts.username or parts.password):
        raise InputError("url", "must not contain a user name or password")
    policy = OutboundPolicy.from_settings()
    refused = registration_refusal(url, policy) if parts.scheme in ("http", "https") and parts.netloc else None
    if refused is not None and refused.category == REFUSED_PORT:
        raise InputError("url", f"must use an allowed port ({policy.ports_text()})")
    if refused is not None and refused.category == REFUSED_URL:  # a port past 65535, a broken host
        raise InputError("url", "must be an absolute http:// or https:// URL")
    if refused is not None:
        reason = refused.category.removeprefix("refused: ")
        article = "an" if reason[0] in "aeiou" else "a"
        raise InputError(
            "url",
            f"must point to the public internet, not to {article} {reason} "
            "(an administrator can allow chosen internal hosts)",
        )
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise InputError("url", "must be an absolute http:// or https:// URL") from None
    return url


def webhook_create(*, owner, url: str) -> Webhook:
    """Register an endpoint; its signing secret is generated here (shown once, by the caller)."""
    url = webhook_url_validate(url)
    with transaction.atomic():
        check_limit(owner, "webhooks", used=Webhook.objects.filter(owner=owner).count())
        return Webhook.objects.create(owner=owner, url=url)


def webhook_delete(*, webhook: Webhook, by) -> None:
    """Remove an endpoint and its delivery history (the caller looked it up by owner)."""
    if webhook.owner_id != by.id:
        raise InputError("webhook", "not your webhook")
    webhook.delete()


def webhook_secret_rotate(*, webhook: Webhook) -> Webhook:
    """Replace the signing secret (the caller looked the webhook up by owner). Deliveries still being
    retried are signed with the new secret from their next attempt on."""
    webhook.secret = webhook_secret_new()
    webhook.save(update_fields=["secret"])
    return webhook


def _delivery_create(*, webhook: Webhook, event: str, data: dict[str, Any]) -> WebhookDelivery:
    """One delivery of one event (OpenAI's event envelope, `data` inside); the caller queues it on commit."""
    delivery_id = uuid.uuid4()
    payload = {
        "id": f"msg_{delivery_id.hex}",
        "object": "event",
        "type": event,
        "created_at": int(timezone.now().timestamp()),
        "data": data,
    }
    return WebhookDelivery.objects.create(id=delivery_id, webhook=webhook, event=event, payload=payload)


def webhook_job_data(job: FineTuneJob) -> dict[str, Any]:
    """The `data` of a job event: the job's id (as /v1/ shows it), status and outcome."""
    return {
        "id": ftjob_id(job.id),
        "status": job.status,
        "name": job.name,
        "error": job.error or None,
        "final_loss": job.final_loss,
        "step": job.step,
        "total_steps": job.total_steps,
        "finished_at": int(job.finished.timestamp()) if job.finished else None,
    }


def webhook_event_for_job(job: FineTuneJob) -> list[WebhookDelivery]:
    """One delivery per active webhook of the job's owner for a job that just ended, sent on commit."""
    if job.status not in EVENT_TYPES:
        return []
    with transaction.atomic():
        deliveries = [
            _delivery_create(webhook=webhook, event=EVENT_TYPES[job.status], data=webhook_job_data(job))
            for webhook in Webhook.objects.filter(owner_id=job.owner_id, active=True)
        ]
        for delivery in deliveries:
            queue.enqueue(queue.WEBHOOK_DELIVER, str(delivery.id))
    return deliveries


def webhook_ping(*, webhook: Webhook) -> WebhookDelivery:
    """Queue a signed `ping` event to the endpoint (sent on commit, one attempt), so an owner can check their
    receiver and its signature check before a job ends. One ping at a time per webhook and at most
    WEBHOOK_PINGS_IN_FLIGHT_PER_USER across the owner's webhooks: more is refused with Busy (429)."""
    if not webhook.active:
        raise InputError("webhook", "is inactive, so nothing is sent to it")
    with transaction.atomic():
        # Locking the owner's webhooks makes two pings at once take turns here (PostgreSQL; SQLite has one writer).
        list(Webhook.objects.select_for_update().filter(owner_id=webhook.owner_id).values_list("id", flat=True))
        _ping_refusal(webhook)
        delivery = _delivery_create(webhook=webhook, event=PING_EVENT, data={"webhook": webhook.id, "url": webhook.url})
        queue.enqueue(queue.WEBHOOK_DELIVER, str(delivery.id))
    return delivery


def _ping_refusal(webhook: Webhook) -> None:
    """Raise Busy when a ping to this webhook, or the owner's allowance of pings, is still in flight."""
    in_flight = pings_in_flight(WebhookDelivery.objects.filter(webhook__owner_id=webhook.owner_id))
    own = in_flight.filter(webhook_id=webhook.id).order_by("created").first()
    allowed = settings.WEBHOOK_PINGS_IN_FLIGHT_PER_USER
    if own is None and in_flight.count() < allowed:
        return
    oldest = own or in_flight.order_by("created").first()
    # The ping ends with its one attempt (WEBHOOK_TIMEOUT_SECONDS) or, at the latest, when its window closes.
    left = (oldest.created + ping_window() - timezone.now()).total_seconds() if oldest else 0
    wait = int(min(max(left, 1), settings.WEBHOOK_TIMEOUT_SECONDS)) + 1
    if own is not None:
        raise Busy(
            f"a test ping to this webhook is still being sent; try again in {wait} s", retry_after=wait, field="webhook"
        )
    raise Busy(
        f"{allowed} test ping{'s' if allowed != 1 else ''} to your webhooks {'are' if allowed != 1 else 'is'} still "
        f"being sent (setting WEBHOOK_PINGS_IN_FLIGHT_PER_USER); try again in {wait} s",
        retry_after=wait,
        field="webhook",
    )
