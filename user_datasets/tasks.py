"""Celery tasks of the datasets domain (background queue)."""
from __future__ import annotations

import time

from celery import shared_task
from django.conf import settings

from common import queue
from common.storage import media_path
from user_datasets.services import PENDING_DIR


@shared_task(name=queue.EXPIRE_UPLOADS)
def expire_uploads() -> int:
    """Delete uploads that waited for a column mapping longer than UPLOAD_PENDING_HOURS; how many."""
    cutoff = time.time() - settings.UPLOAD_PENDING_HOURS * 3600
    folder = media_path(PENDING_DIR)
    expired = [p for p in folder.glob("*") if p.is_file() and p.stat().st_mtime < cutoff] if folder.is_dir() else []
    for path in expired:
        path.unlink(missing_ok=True)
    return len(expired)
