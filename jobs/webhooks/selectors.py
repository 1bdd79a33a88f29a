"""Reads of webhooks; each takes the owner (deliveries through their owner's webhook)."""

from __future__ import annotations

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from jobs.webhooks.models import Webhook, WebhookDelivery


def webhook_list(*, owner) -> QuerySet[Webhook]:
    return Webhook.objects.filter(owner=owner)


def webhook_get(*, owner, webhook_id) -> Webhook:
    """The owner's webhook, or Http404 (another user's webhook does not exist for you)."""
    return get_object_or_404(webhook_list(owner=owner), id=webhook_id)


def webhook_deliveries(*, webhook: Webhook) -> QuerySet[WebhookDelivery]:
    return WebhookDelivery.objects.filter(webhook=webhook)


def recent_deliveries(*, owner, limit: int = 50) -> QuerySet[WebhookDelivery]:
    """The newest deliveries to any of the owner's webhooks."""
    return WebhookDelivery.objects.filter(webhook__owner=owner).select_related("webhook")[:limit]
