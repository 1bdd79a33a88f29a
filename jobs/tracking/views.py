"""The experiment-tracking page: the user's MLflow server, experiment and token, and their recent logs."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from jobs.tracking.models import MlflowLog
from jobs.tracking.selectors import tracker_settings
from jobs.tracking.services import mlflow_message, tracker_settings_update
from worker.errors import InputError

RECENT_LOGS = 20


@login_required
def tracking_settings(request):
    """GET: the settings and recent logs. POST: save the settings (an empty token field keeps the stored one)."""
    status = 200
    form = tracker_settings(owner=request.user)
    if request.method == "POST":
        form = {
            **form,
            "mlflow_uri": request.POST.get("mlflow_uri", ""),
            "experiment": request.POST.get("experiment", ""),
        }
        token = request.POST.get("token", "")
        try:
            tracker_settings_update(
                owner=request.user,
                mlflow_uri=form["mlflow_uri"],
                experiment=form["experiment"],
                token=None if not token and not request.POST.get("clear_token") else token,
                enabled=bool(request.POST.get("enabled")),
            )
        except InputError as exc:
            messages.error(request, f"{exc.field}: {exc.message}.")
            status = 400
        else:
            messages.success(request, "Saved: your next finished jobs are logged there.")
            form = tracker_settings(owner=request.user)
    logs = MlflowLog.objects.filter(job__owner=request.user).select_related("job").order_by("-created")[:RECENT_LOGS]
    rows = [(log, mlflow_message(log)) for log in logs]
    return render(request, "tracking/tracking.html", {"form": form, "logs": rows}, status=status)
