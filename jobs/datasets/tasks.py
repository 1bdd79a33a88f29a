"""Celery tasks of the datasets domain (background queue)."""
from __future__ import annotations

import time
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from jobs.common import queue
from jobs.common.storage import media_path
from jobs.datasets import services
from jobs.datasets.models import UploadCheck
from jobs.datasets.services import PENDING_DIR


@shared_task(name=queue.EXPIRE_UPLOADS)
def expire_uploads() -> int:
    """Delete uploads that waited for a column mapping longer than UPLOAD_PENDING_HOURS; how many."""
    cutoff = time.time() - settings.UPLOAD_PENDING_HOURS * 3600
    folder = media_path(PENDING_DIR)
    expired = [p for p in folder.glob("*") if p.is_file() and p.stat().st_mtime < cutoff] if folder.is_dir() else []
    for path in expired:
        path.unlink(missing_ok=True)
    finished = [UploadCheck.Status.READY, UploadCheck.Status.FAILED, UploadCheck.Status.NEEDS_MAPPING]
    UploadCheck.objects.filter(status__in=finished, updated__lt=timezone.now() - timedelta(
        hours=settings.UPLOAD_PENDING_HOURS)).delete()
    return len(expired)


@shared_task(name=queue.CHECK_UPLOAD, acks_late=True, reject_on_worker_lost=True)
def check_upload(check_id: str) -> str:
    """Check a large upload in the limited child process; it becomes a Dataset or a failed check."""
    return services.upload_check_run(check_id=check_id)


@shared_task(name=queue.TOKEN_PROFILE, acks_late=True, reject_on_worker_lost=True)
def token_profile(profile_id: int) -> str:
    """Count a dataset's tokens under one tokenizer, once (see TokenProfile)."""
    return services.token_profile_compute(profile_id=profile_id)


@shared_task(name=queue.SWEEP_DATASETS)
def sweep() -> dict:
    """Send again the checks and token counts whose message or worker was lost."""
    stale = settings.DATASET_PARSE_SECONDS + 2 * settings.SWEEP_SECONDS
    return {"checks": services.upload_checks_resend(stale_seconds=stale),
            "token_profiles": services.token_profiles_resend(stale_seconds=stale)}
