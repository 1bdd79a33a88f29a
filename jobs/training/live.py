"""A job's live channel on Redis: metric points, messages and status changes for the job page."""

from __future__ import annotations

from typing import Any

from jobs.common import events
from jobs.training.models import FineTuneJob


def job_channel(job_id) -> str:
    return f"job:{job_id}"


def publish_job(job_id, kind: str, data: dict[str, Any]) -> None:
    events.publish(job_channel(job_id), kind, data)


def status_event(job: FineTuneJob) -> dict[str, Any]:
    """What the status event says (also replayed to a page that connects late)."""
    return {
        "status": job.status,
        "error": job.error,
        "step": job.step,
        "total_steps": job.total_steps,
        "precision": job.precision,
    }


def publish_status(job: FineTuneJob) -> None:
    publish_job(job.id, "status", status_event(job))
