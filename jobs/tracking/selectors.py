"""Reads of experiment tracking, always for one owner."""

from __future__ import annotations

from django.conf import settings

from jobs.tracking.models import TrackerSettings


def tracker_settings(*, owner) -> dict:
    """The user's tracking settings as shown (the token only as whether one is set) and the site default."""
    own = TrackerSettings.objects.filter(owner=owner).first()
    return {
        "mlflow_uri": own.mlflow_uri if own else "",
        "experiment": own.experiment if own else "",
        "token_set": bool(own and own.token),
        "enabled": own.enabled if own else True,
        "site_default_uri": settings.MLFLOW_TRACKING_URI,
    }
