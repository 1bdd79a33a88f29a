"""The merged export's state: one MergedExport row per job, claimed like a job (jobs.training.claims): a merge
run takes the row with a fresh token and a lease on the database's clock, renews the lease while it works, and
writes its end only while it still holds the token. A lease that ran out means the message was lost (queued) or
the worker died (running): the sweep queues it again, counting an attempt, and gives up after MERGE_MAX_ATTEMPTS."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Now

from jobs.training.claims import lease_from_now
from jobs.training.models import FineTuneJob, MergedExport

MERGE_MAX_ATTEMPTS = 3
Status = MergedExport.Status


def merged_export_of(job: FineTuneJob) -> MergedExport | None:
    return MergedExport.objects.filter(job_id=job.id).first()


def merged_status(job: FineTuneJob) -> str:
    """none, pending or ready (a failed export reads as none: it can be asked again)."""
    status = MergedExport.objects.filter(job_id=job.id).values_list("status", flat=True).first()
    if status in (Status.QUEUED, Status.RUNNING):
        return "pending"
    return "ready" if status == Status.READY else "none"


def merge_queue(job: FineTuneJob) -> bool:
    """Queue a fresh export (attempts from zero) unless one is pending or ready; whether it was queued. The lease
    is the time its message has to arrive before the sweep counts it lost."""
    fresh = dict(
        status=Status.QUEUED,
        attempts=0,
        claim="",
        error="",
        size_bytes=0,
        finished=None,
        lease_until=lease_from_now(settings.MERGE_STALE_SECONDS),
    )
    with transaction.atomic():
        row, created = MergedExport.objects.get_or_create(job_id=job.id, defaults={"status": Status.QUEUED})
        if created or row.status == Status.FAILED:
            return MergedExport.objects.filter(id=row.id, status=row.status).update(**fresh) == 1
    return False


def merge_running_alive(job: FineTuneJob) -> bool:
    """A merge holds the row and its lease has not run out."""
    return MergedExport.objects.filter(job_id=job.id, status=Status.RUNNING, lease_until__gt=Now()).exists()


def merge_claim(job: FineTuneJob) -> str | None:
    """Take the export for this run (queued, or running on a worker whose lease ran out), counting an attempt;
    the claim token, or None when another run holds it or nothing is pending."""
    token = uuid.uuid4().hex
    takeable = Q(status=Status.QUEUED) | Q(status=Status.RUNNING, lease_until__lt=Now())
    taken = MergedExport.objects.filter(takeable, job_id=job.id, attempts__lt=MERGE_MAX_ATTEMPTS).update(
        status=Status.RUNNING,
        claim=token,
        attempts=F("attempts") + 1,
        lease_until=lease_from_now(settings.MERGE_STALE_SECONDS),
    )
    return token if taken == 1 else None


def merge_renew(job: FineTuneJob, token: str) -> bool:
    """Push the running merge's lease on; False once its claim is gone."""
    return (
        MergedExport.objects.filter(job_id=job.id, claim=token, status=Status.RUNNING).update(
            lease_until=lease_from_now(settings.MERGE_STALE_SECONDS)
        )
        == 1
    )


def merge_finish(job: FineTuneJob, token: str, *, size_bytes: int) -> bool:
    """The zip is stored: the export is ready (only for the run that holds the claim)."""
    return (
        MergedExport.objects.filter(job_id=job.id, claim=token, status=Status.RUNNING).update(
            status=Status.READY, size_bytes=size_bytes, claim="", lease_until=None, error="", finished=Now()
        )
        == 1
    )


def merge_fail(job: FineTuneJob, message: str, *, token: str | None = None) -> bool:
    """Give the export up with `message` (fenced by `token` when a run holds it); it can be asked again."""
    rows = MergedExport.objects.filter(job_id=job.id, status__in=[Status.QUEUED, Status.RUNNING])
    if token is not None:
        rows = rows.filter(claim=token)
    return rows.update(status=Status.FAILED, claim="", lease_until=None, error=message[:2000], finished=Now()) == 1


def merges_stale() -> list[MergedExport]:
    """Pending exports whose lease ran out: the message was lost, or the worker died mid-merge."""
    return list(MergedExport.objects.filter(status__in=[Status.QUEUED, Status.RUNNING], lease_until__lt=Now()))


def merge_requeue(row: MergedExport, attempts: int) -> bool:
    """Queue a stale export again with `attempts` and a fresh lease, unless someone changed it meanwhile."""
    return (
        MergedExport.objects.filter(
            id=row.id, status=row.status, attempts=row.attempts, lease_until=row.lease_until
        ).update(
            status=Status.QUEUED, attempts=attempts, claim="", lease_until=lease_from_now(settings.MERGE_STALE_SECONDS)
        )
        == 1
    )


def merged_export_forget(job: FineTuneJob) -> bool:
    """Remove a ready (or failed) export's row; whether a ready one was there."""
    ready = MergedExport.objects.filter(job_id=job.id, status=Status.READY).exists()
    MergedExport.objects.filter(job_id=job.id, status__in=[Status.READY, Status.FAILED]).delete()
    return ready
