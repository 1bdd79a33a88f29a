"""Celery tasks of the datasets domain (background queue)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from jobs.common import queue
from jobs.datasets import token_profiles, uploads


@shared_task(name=queue.EXPIRE_UPLOADS)
def expire_uploads() -> int:
    """Delete uploads that waited for a column mapping (or ended) longer than UPLOAD_PENDING_HOURS; how many
    stored files went."""
    return uploads.uploads_expire(hours=settings.UPLOAD_PENDING_HOURS)


@shared_task(name=queue.CHECK_UPLOAD, acks_late=True, reject_on_worker_lost=True)
def check_upload(check_id: str) -> str:
    """Check a large upload in the limited child process; it becomes a Dataset or a failed check."""
    return uploads.upload_check_run(check_id=check_id)


@shared_task(name=queue.TOKEN_PROFILE, acks_late=True, reject_on_worker_lost=True)
def token_profile(profile_id: int) -> str:
    """Count a dataset's tokens under one tokenizer, once (see TokenProfile)."""
    return token_profiles.token_profile_compute(profile_id=profile_id)


@shared_task(name=queue.SWEEP_DATASETS)
def sweep() -> dict:
    """Send again the checks and token counts whose message or worker was lost."""
    stale = settings.DATASET_PARSE_SECONDS + 2 * settings.SWEEP_SECONDS
    return {
        "checks": uploads.upload_checks_resend(stale_seconds=stale),
        "token_profiles": token_profiles.token_profiles_resend(stale_seconds=stale),
    }
