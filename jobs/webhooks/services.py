"""Writes for webhooks (Standard Webhooks style): keyword-only functions that validate, write in a
transaction and queue the network calls on commit (jobs.webhooks.tasks.webhook_deliver)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.utils import timezone

from jobs.accounts.limits import check_limit
from jobs.common import queue
from jobs.common.ids import ftjob_id
from jobs.common.outbound import REFUSED_PORT, REFUSED_URL, OutboundPolicy, registration_refusal
from jobs.training.models import TERMINAL_STATUSES, FineTuneJob
from jobs.webhooks.models import Webhook, WebhookDelivery, webhook_secret_new
from worker.errors import InputError

EVENT_TYPES = {status.value: f"fine_tuning.job.{status.value}" for status in TERMINAL_STATUSES}
PING_EVENT = "ping"


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
    """Queue a signed `ping` event to the endpoint (sent on commit, retried like any event), so an owner
    can check their receiver and its signature check before a job ends."""
    if not webhook.active:
        raise InputError("webhook", "is inactive, so nothing is sent to it")
    with transaction.atomic():
        delivery = _delivery_create(webhook=webhook, event=PING_EVENT, data={"webhook": webhook.id, "url": webhook.url})
        queue.enqueue(queue.WEBHOOK_DELIVER, str(delivery.id))
    return delivery
