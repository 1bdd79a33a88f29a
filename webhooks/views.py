"""The webhooks page: add and delete endpoints, show their signing secrets and recent deliveries."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.limits import QuotaExceeded
from webhooks import selectors
from webhooks.services import webhook_create, webhook_delete
from worker.config import ConfigError

RECENT_DELIVERIES = 50


def _webhooks_page(request, *, url: str = "", status: int = 200):
    response = render(request, "webhooks/webhooks.html", {
        "webhooks": selectors.webhook_list(owner=request.user),
        "deliveries": selectors.recent_deliveries(owner=request.user, limit=RECENT_DELIVERIES),
        "url": url}, status=status)
    response["Cache-Control"] = "no-store"  # the page shows signing secrets
    return response


@login_required
def webhook_list(request):
    """GET: the webhooks and recent deliveries. POST: add a webhook."""
    if request.method != "POST":
        return _webhooks_page(request)
    url = request.POST.get("url", "")
    try:
        webhook = webhook_create(owner=request.user, url=url)
    except ConfigError as exc:
        messages.error(request, f"The URL {exc.message}.")
        return _webhooks_page(request, url=url, status=400)
    except QuotaExceeded as exc:
        messages.error(request, exc.message)
        return _webhooks_page(request, url=url, status=429)
    messages.success(request, f"Added {webhook.url}.")
    return redirect("webhook-list")


@login_required
@require_POST
def webhook_remove(request, webhook_id):
    webhook = selectors.webhook_get(owner=request.user, webhook_id=webhook_id)
    webhook_delete(webhook=webhook, by=request.user)
    messages.success(request, f"Deleted {webhook.url}.")
    return redirect("webhook-list")
