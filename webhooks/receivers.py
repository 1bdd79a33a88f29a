"""Webhooks hear of job ends through training's signal (connected in WebhooksConfig.ready)."""
from __future__ import annotations

from django.dispatch import receiver

from training.signals import job_finished
from webhooks.services import webhook_event_for_job


@receiver(job_finished, dispatch_uid="webhooks-on-job-finished")
def deliver_job_event(sender, job, **kwargs):
    webhook_event_for_job(job)
