"""The background worker's task that pushes a job to the Hugging Face Hub (jobs.training.publish)."""

from __future__ import annotations

from celery import shared_task

from jobs.common import queue
from jobs.common.shares import EXPORTS, owner_share
from jobs.training import publish
from jobs.training.models import JobPublish


@shared_task(name=queue.HUB_PUBLISH, acks_late=True)
def hub_publish(publish_id: int) -> str:
    """Push one publish; its end status ("skipped" when another run has it or it is gone)."""
    owner_id = JobPublish.objects.filter(id=publish_id).values_list("job__owner_id", flat=True).first()
    if owner_id is None:
        return "skipped"
    with owner_share(EXPORTS, owner_id):
        return publish.publish_run(publish_id)
