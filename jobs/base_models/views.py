"""The Models page: the base models you may use (shared and your own) with their size, context length,
chat template and the jobs on them; staff (and every user when USER_MODELS is on) add models from the
Hugging Face Hub or a GGUF upload, staff also from a folder on the server. Progress of a download or a
conversion is followed by static/app/base_models.js through the model's /api/v1/ detail."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from jobs.base_models import selectors, services
from jobs.common.exceptions import ProductError

WORKING = ("queued", "downloading", "converting")


def _page(request, *, form: dict | None = None, status: int = 200):
    rows = []
    for model in selectors.base_model_list(owner=request.user, ready_only=False).select_related("owner"):
        rows.append(
            {
                "model": model,
                "working": model.status in WORKING,
                "jobs": list(selectors.jobs_using(owner=request.user, model=model)[:20]),
                "jobs_total": model.jobs.count(),
                "can_delete": request.user.is_staff if model.shared else True,
            }
        )
    return render(
        request,
        "base_models/models.html",
        {
            "rows": rows,
            "form": form or {},
            "can_add": services.can_add_models(request.user),
            "offline": settings.OFFLINE,
            "hf_endpoint": settings.HF_ENDPOINT,
            "gguf_max_mb": settings.GGUF_MAX_BYTES // 2**20,
        },
        status=status,
    )


def _error_place(request, source: str) -> str:
    """Where the page shows a refusal: beside the form of `source` when the user sees that form, else on top."""
    if not services.can_add_models(request.user) or source not in ("hub", "gguf", "folder"):
        return "top"
    if source == "folder" and not request.user.is_staff:
        return "top"
    return source


@login_required
def model_list(request):
    """GET: the models. POST: add one (source hub, folder or gguf); a refusal is shown beside the form."""
    if request.method != "POST":
        return _page(request)
    post = request.POST
    source = post.get("source", "")
    try:
        model = services.base_model_add(
            by=request.user,
            source=source,
            name=post.get("name", ""),
            hub_id=post.get("hub_id", ""),
            revision=post.get("revision", ""),
            token=post.get("token", ""),
            path=post.get("path", ""),
            upload=request.FILES.get("file"),
        )
    except ProductError as exc:
        kept = {k: post.get(k, "") for k in ("name", "hub_id", "revision", "path")}
        form = {"source": source, "field": exc.field, "error": exc.message, "shown_at": _error_place(request, source)}
        return _page(request, form={**form, **kept}, status=exc.status)
    messages.success(
        request,
        f"Added {model.name}."
        if model.status == "ready"
        else f"{model.name} is being prepared by a worker; this page shows its progress.",
    )
    return redirect("model-list")


@login_required
@require_POST
def model_delete(request, model_id):
    model = selectors.base_model_get(owner=request.user, model_id=model_id)
    try:
        services.base_model_delete(by=request.user, model=model)
    except ProductError as exc:
        messages.error(request, exc.message)
        return redirect("model-list")
    messages.success(request, f"Deleted {model.name}.")
    return redirect("model-list")
