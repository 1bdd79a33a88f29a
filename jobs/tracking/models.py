"""Where a user's runs are logged (MLflow) and how the logging of each finished job went."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class TrackerSettings(models.Model):
    """A user's MLflow tracking server; an empty URI means the site default (settings MLFLOW_TRACKING_URI)."""

    owner = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tracker")
    mlflow_uri = models.URLField(max_length=500, blank=True)
    experiment = models.CharField(max_length=200, blank=True, help_text="empty: the site default")
    token = models.CharField(max_length=500, blank=True, help_text="sent as a Bearer token; never shown again")
    enabled = models.BooleanField(default=True, help_text="off: no job of this user is logged, not even to the site's")
    updated = models.DateTimeField(auto_now=True)


class LogState(models.TextChoices):
    PENDING = "pending"  # queued, or waiting to retry
    LOGGED = "logged"
    FAILED = "failed"  # gave up after the last attempt


class MlflowLog(models.Model):
    """The logging of one job to MLflow. `run_id` and `done` let a retry go on where the last attempt stopped."""

    job = models.OneToOneField("training.FineTuneJob", on_delete=models.CASCADE, related_name="mlflow_log")
    uri = models.URLField(max_length=500)
    experiment = models.CharField(max_length=200)
    site_default = models.BooleanField(default=False, help_text="the site's server (its host is allowed)")
    state = models.CharField(max_length=10, choices=LogState.choices, default=LogState.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    run_id = models.CharField(max_length=64, blank=True)
    done = models.JSONField(default=list, help_text="the steps already logged: params, metrics, artifact, ...")
    last_error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
