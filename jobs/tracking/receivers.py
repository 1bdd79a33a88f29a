"""Tracking hears of job ends through training's signal (connected in TrackingConfig.ready)."""

from __future__ import annotations

from django.dispatch import receiver

from jobs.tracking.services import mlflow_log_for_job
from jobs.training.signals import job_finished


@receiver(job_finished, dispatch_uid="tracking-on-job-finished")
def log_job_to_mlflow(sender, job, **kwargs):
    mlflow_log_for_job(job)
