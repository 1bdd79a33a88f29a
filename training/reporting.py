"""The engine's Reporter for the web app: metric points to the database and to Redis."""
from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction
from django.utils import timezone

from training.live import publish_job
from training.models import FineTuneJob, JobEvent, MetricPoint

CORE_KEYS = {"loss", "eval_loss", "lr", "epoch", "tokens_per_s"}


class DbReporter:
    """Upserts MetricPoint(job, step), so a resumed job rewrites a step instead of duplicating it."""

    def __init__(self, job_id, lease_seconds: int):
        self.job_id = job_id
        self.lease_seconds = lease_seconds

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        extra = {k: v for k, v in metrics.items() if k not in CORE_KEYS}
        with transaction.atomic():
            point, _ = MetricPoint.objects.update_or_create(
                job_id=self.job_id, step=step,
                defaults=dict(epoch=metrics.get("epoch", 0), train_loss=metrics.get("loss"),
                              eval_loss=metrics.get("eval_loss"), lr=metrics.get("lr"),
                              tokens_per_s=metrics.get("tokens_per_s"), extra=extra),
            )
            FineTuneJob.objects.filter(id=self.job_id).update(
                step=step, total_steps=metrics.get("total_steps", 0),
                lease_until=timezone.now() + dt.timedelta(seconds=self.lease_seconds))
        publish_job(self.job_id, "metric", point.as_event())

    def event(self, kind: str, message: str) -> None:
        JobEvent.objects.create(job_id=self.job_id, kind=kind, message=message)
        publish_job(self.job_id, "message", {"kind": kind, "message": message})
