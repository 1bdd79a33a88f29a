"""The webhooks page: add and delete endpoints, rotate their signing secrets, see recent deliveries.

A signing secret is shown once, in the answer that made it (adding a webhook, rotating its secret),
like an API key; the page never shows it again."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from jobs.accounts.limits import QuotaExceeded
from jobs.common.exceptions import Busy
from jobs.webhooks import selectors
from jobs.webhooks.models import Webhook
from jobs.webhooks.services import webhook_create, webhook_delete, webhook_ping, webhook_secret_rotate
from worker.errors import InputError

RECENT_DELIVERIES = 50


def _webhooks_page(request, *, url: str = "", new_secret: Webhook | None = None, status: int = 200):
    response = render(
        request,
        "webhooks/webhooks.html",
        {
            "webhooks": selectors.webhook_list(owner=request.user),
            "deliveries": selectors.recent_deliveries(owner=request.user, limit=RECENT_DELIVERIES),
            "url": url,
            "new_secret": new_secret,
        },
        status=status,
    )
    if new_secret is not None:
        response["Cache-Control"] = "no-store"  # the answer holds a signing secret
    return response


@login_required
def webhook_list(request):
    """GET: the webhooks and recent deliveries. POST: add a webhook and show its secret, this once."""
    if request.method != "POST":
        return _webhooks_page(request)
    url = request.POST.get("url", "")
    try:
        webhook = webhook_create(owner=request.user, url=url)
    except InputError as exc:
        messages.error(request, f"The URL {exc.message}.")
        return _webhooks_page(request, url=url, status=400)
    except QuotaExceeded as exc:
        messages.error(request, exc.message)
        return _webhooks_page(request, url=url, status=429)
    messages.success(request, f"Added {webhook.url}.")
    return _webhooks_page(request, new_secret=webhook, status=201)


@login_required
@require_POST
def webhook_rotate_secret(request, webhook_id):
    """POST: replace the webhook's signing secret and show the new one, this once."""
    webhook = webhook_secret_rotate(webhook=selectors.webhook_get(owner=request.user, webhook_id=webhook_id))
    messages.success(request, f"New signing secret for {webhook.url}; the old one no longer signs.")
    return _webhooks_page(request, new_secret=webhook)


@login_required
@require_POST
def webhook_remove(request, webhook_id):
    webhook = selectors.webhook_get(owner=request.user, webhook_id=webhook_id)
    webhook_delete(webhook=webhook, by=request.user)
    messages.success(request, f"Deleted {webhook.url}.")
    return redirect("webhook-list")


@login_required
@require_POST
def webhook_test(request, webhook_id):
    """POST: send a signed `ping` event to the endpoint; its delivery shows under Recent deliveries."""
    webhook = selectors.webhook_get(owner=request.user, webhook_id=webhook_id)
    try:
        webhook_ping(webhook=webhook)
    except InputError as exc:
        messages.error(request, f"The webhook {exc.message}.")
    except Busy as exc:
        messages.error(request, exc.message[0].upper() + exc.message[1:] + ".")
    else:
        messages.success(request, f"Sent a test event to {webhook.url}; its delivery shows below within seconds.")
    return redirect("webhook-list")
