"""Webhooks hear of job ends through training's signal (connected in WebhooksConfig.ready)."""

from __future__ import annotations

from django.dispatch import receiver

from jobs.accounts.limits import usage_reported
from jobs.training.signals import job_finished
from jobs.webhooks.models import Webhook
from jobs.webhooks.services import webhook_event_for_job


@receiver(job_finished, dispatch_uid="webhooks-on-job-finished")
def deliver_job_event(sender, job, **kwargs):
    webhook_event_for_job(job)


@receiver(usage_reported, dispatch_uid="webhooks-usage")
def report_usage(sender, user, **kwargs):
    return {"webhooks": Webhook.objects.filter(owner=user).count()}
