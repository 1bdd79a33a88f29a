"""Webhook endpoints and the deliveries sent to them."""

from __future__ import annotations

import base64
import secrets
import uuid

from django.conf import settings
from django.db import models

MAX_ATTEMPTS = 5


def webhook_secret_new() -> str:
    """A signing secret in Standard Webhooks form: `whsec_` and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Webhook(models.Model):
    """An owner's HTTPS endpoint told when their jobs end; deliveries are signed with `secret`."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=100, default=webhook_secret_new)
    active = models.BooleanField(default=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "jobs_webhook"  # tables keep the names of the single app this project once had
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.url


class WebhookDelivery(models.Model):
    """One event sent (or being retried) to one webhook."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=60)
    payload = models.JSONField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    delivered = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "jobs_webhookdelivery"
        ordering = ["-created"]

    @property
    def state(self) -> str:
        """`delivered`, `failed` (gave up after the last attempt) or `pending` (queued or waiting to retry)."""
        if self.delivered:
            return "delivered"
        return "failed" if self.attempts >= MAX_ATTEMPTS else "pending"
