"""Webhook endpoints and the deliveries sent to them."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

MAX_ATTEMPTS = 5
PING_EVENT = "ping"  # a test ping: one attempt, its answer shown at once (no retries behind a test button)
# A ping not started this long after it was asked for is not sent (the background worker was busy): so a ping is
# in flight for at most this plus one attempt's WEBHOOK_TIMEOUT_SECONDS, even if its message is lost.
PING_START_GRACE_S = 60


def ping_window() -> dt.timedelta:
    """How long after it was asked for a ping may still be sent or answered; past it, it no longer counts."""
    return dt.timedelta(seconds=PING_START_GRACE_S + settings.WEBHOOK_TIMEOUT_SECONDS)


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
    def max_attempts(self) -> int:
        """How many attempts this delivery gets: one for a test ping, MAX_ATTEMPTS for a job event."""
        return 1 if self.event == PING_EVENT else MAX_ATTEMPTS

    @property
    def state(self) -> str:
        """`delivered`, `failed` (gave up after the last attempt) or `pending` (queued or waiting to retry)."""
        if self.delivered:
            return "delivered"
        if self.event == PING_EVENT:  # its one attempt failed, or it is past the time a ping may take
            return "failed" if self.last_error or timezone.now() - self.created > ping_window() else "pending"
        return "failed" if self.attempts >= MAX_ATTEMPTS else "pending"


def pings_in_flight(deliveries):
    """The test pings among `deliveries` not yet answered or failed, and still inside their window."""
    return deliveries.filter(
        event=PING_EVENT, delivered=False, last_error="", created__gt=timezone.now() - ping_window()
    )
