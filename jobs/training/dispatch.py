"""Handing jobs to the train queue so that none is ever stranded. Each send leaves a marker in Redis
beside the message; a claim removes it. A queued job with no marker lost its message (Redis restarted
without its data, or the send failed), and the sweep sends it again; a duplicate message is harmless,
since only one run can claim the job. A marker lives a few leases: a message taken by a worker that
died before claiming its job, or one that started another user's job in its turn (the queue is
fair), leaves a marker with no message behind, and such a job is sent again once it expires."""
from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.db import transaction

from jobs.common import queue
from jobs.common.events import redis_client
from jobs.training.models import FineTuneJob, JobStatus
from jobs.training.routing import fits, job_devices

log = logging.getLogger(__name__)


def marker_ttl_seconds() -> int:
    """How long a sent message is trusted to be waiting: five leases (ten minutes by default)."""
    return 5 * settings.JOB_LEASE_SECONDS


def _marker(job_id) -> str:
    return f"train-dispatch:{job_id}"


def dispatch_job(job_id) -> None:
    """Send the job to the train queue now; on a broker error the sweep sends it later."""
    try:
        queue.send(queue.TRAIN_JOB, str(job_id))
    except Exception as exc:  # noqa: BLE001 (kombu and redis raise many kinds; the sweep is the remedy)
        log.warning("could not queue job %s now (%s); the sweep will", job_id, exc)
        return
    try:
        redis_client().set(_marker(job_id), "1", ex=marker_ttl_seconds())
    except redis.RedisError:
        pass  # no marker: the sweep sends the job once more, which is harmless


def dispatch_on_commit(job_id) -> None:
    """Send the job once the current transaction commits."""
    transaction.on_commit(lambda: dispatch_job(job_id))


def is_dispatched(job_id) -> bool:
    """Whether a message for the job should still be waiting in the broker (unknown counts as yes)."""
    try:
        return bool(redis_client().exists(_marker(job_id)))
    except redis.RedisError:
        return True  # the broker is down: sending now would fail anyway


def mark_claimed(job_id) -> None:
    try:
        redis_client().delete(_marker(job_id))
    except redis.RedisError:
        pass


def hand_on(message_job_id, *, started_job_id, capacity) -> None:
    """After a worker used the message of `message_job_id` for its turn: if it started another job, the
    message's job (still queued) gets a message of its own again, since the other job's message may go to
    a worker that cannot fit it; if it started nothing because the job does not fit this worker (a job of
    its top memory class above its memory), the marker goes, so the sweep sends the job again for a worker
    that fits it (once a sweep, not in a loop with this worker)."""
    if started_job_id is not None and str(started_job_id) == str(message_job_id):
        return
    job = FineTuneJob.objects.filter(id=message_job_id, status=JobStatus.QUEUED).only("memory_mb", "config").first()
    if job is None:
        return
    if started_job_id is not None:
        dispatch_job(job.id)
    elif not fits(capacity, need_mb=job.memory_mb, devices=job_devices(job.config)):
        log.info("job %s does not fit this worker; the sweep sends it again", job.id)
        mark_claimed(job.id)
