"""Uploads through the pages and the REST API: a file up to DATASET_CHECK_INLINE_BYTES is checked during the
request; a larger one is stored under an opaque name as an `UploadCheck` and checked by a background worker."""

from __future__ import annotations

import logging
import os
import uuid
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from jobs.accounts.limits import QuotaExceeded
from jobs.common import blobs, queue
from jobs.common.exceptions import StateError
from jobs.common.storage import media_path, media_relative
from jobs.datasets.intake import dataset_store, upload_receive
from jobs.datasets.mapping import PENDING_DIR, dataset_check_now, parked_name
from jobs.datasets.models import Dataset, UploadCheck
from worker.data.problems import DatasetError, SchemaUnknown
from worker.errors import InputError

log = logging.getLogger(__name__)


def dataset_upload(
    *, owner, upload, name: str = "", mapping: dict | None = None, drop_duplicates: bool = False
) -> Dataset | UploadCheck:
    """The upload pages' entry: a small file is checked during the request (as `dataset_create`); a larger one
    is only stored here and checked by a background worker, whose progress the returned UploadCheck shows."""
    tmp, filename, size = upload_receive(owner, upload)
    try:
        if size <= settings.DATASET_CHECK_INLINE_BYTES:
            return dataset_check_now(
                owner=owner,
                source=tmp,
                filename=filename,
                name=name,
                size=size,
                mapping=mapping,
                drop_duplicates=drop_duplicates,
            )
        check = UploadCheck(
            owner=owner,
            filename=filename[:255],
            name=name[:200],
            mapping=mapping or {},
            drop_duplicates=drop_duplicates,
            size_bytes=size,
            file=parked_name(tmp.suffix),
        )
        with blobs.writing(check.file) as path:  # the background worker may run on another machine
            os.replace(tmp, path)
        with transaction.atomic():
            check.save()
            queue.enqueue(queue.CHECK_UPLOAD, str(check.id))
        return check
    finally:
        tmp.unlink(missing_ok=True)


def upload_check_delete(*, check: UploadCheck) -> None:
    """Forget an upload that has not become a dataset, with its stored file; refused while it is being checked."""
    if not UploadCheck.objects.filter(id=check.id).exclude(status=UploadCheck.Status.CHECKING).delete()[0]:
        raise StateError("the file is being checked; delete it once its check has ended")
    if check.file:
        blobs.delete(check.file)


def _finish(check: UploadCheck, status, **fields) -> str:
    UploadCheck.objects.filter(id=check.id).update(status=status, **fields)
    return status


def _refused(check: UploadCheck, work: Path, problems: list[str], total: int) -> str:
    """Forget a refused upload (the local working copy and the stored one) and record why."""
    work.unlink(missing_ok=True)
    blobs.delete(check.file)
    return _finish(check, UploadCheck.Status.FAILED, stage="", problems=problems, problem_total=total)


def upload_check_run(*, check_id) -> str:
    """Check a stored upload (the background task's body): it becomes a Dataset, or the check records
    the located problems, or the columns to map. A check another run already took is skipped."""
    taken = UploadCheck.objects.filter(id=check_id, status=UploadCheck.Status.QUEUED).update(
        status=UploadCheck.Status.CHECKING, started=timezone.now(), stage="starting", attempts=F("attempts") + 1
    )
    if not taken:
        return "skipped"
    check = UploadCheck.objects.select_related("owner").get(id=check_id)
    done = Dataset.objects.filter(id=check.id, owner=check.owner).first()
    if done is not None:  # an earlier run stored it and was lost before it said so
        blobs.delete(check.file)
        return _finish(check, UploadCheck.Status.READY, stage="", rows=done.rows, dataset=done)
    path = blobs.fetch(check.file)  # stored by the web host that took the upload

    def progress(stage: str, rows: int) -> None:
        UploadCheck.objects.filter(id=check.id, status=UploadCheck.Status.CHECKING).update(
            stage=stage, rows=rows, updated=timezone.now()
        )

    if not path.is_file():
        return _finish(
            check,
            UploadCheck.Status.FAILED,
            stage="",
            problems=[f"{check.filename}: the stored upload has expired; upload the file again"],
            problem_total=1,
        )
    work = path.with_name(f".{uuid.uuid4().hex}{path.suffix}")
    os.replace(path, work)  # dataset_store moves its input into place on success
    try:
        dataset = dataset_store(
            owner=check.owner,
            source=work,
            filename=check.filename,
            name=check.name,
            size=check.size_bytes,
            mapping=check.mapping or None,
            drop_duplicates=check.drop_duplicates,
            on_progress=progress,
            background=True,
            dataset_id=check.id,
            replaces=check.size_bytes,
        )
    except SchemaUnknown as exc:
        if check.mapping:
            return _refused(check, work, exc.messages(), exc.total)
        os.replace(work, path)  # parked under its opaque name (and still in the store): the mapping step's token
        return _finish(
            check,
            UploadCheck.Status.NEEDS_MAPPING,
            stage="",
            columns=list(exc.columns),
            column_samples=exc.samples,
            problems=[str(exc)],
            problem_total=1,
        )
    except DatasetError as exc:
        return _refused(check, work, exc.messages(), exc.total)
    except InputError as exc:
        return _refused(check, work, [f"{exc.field}: {exc.message}"], 1)
    except QuotaExceeded as exc:
        return _refused(check, work, [f"{check.filename}: {exc}"], 1)
    except Exception:
        log.exception("upload check %s failed", check.id)
        return _refused(check, work, [f"{check.filename}: the check failed unexpectedly; upload the file again"], 1)
    blobs.delete(check.file)  # the file now lives on as the dataset's
    return _finish(check, UploadCheck.Status.READY, stage="", rows=dataset.rows, dataset=dataset)


def upload_checks_resend(*, stale_seconds: float, max_attempts: int = 3) -> int:
    """Re-queue checks whose run was lost (its worker died) or whose message was; how many. A check
    that was lost `max_attempts` times fails instead of crashing workers for ever."""
    cutoff = timezone.now() - timedelta(seconds=stale_seconds)
    lost = UploadCheck.objects.filter(
        status__in=[UploadCheck.Status.QUEUED, UploadCheck.Status.CHECKING], updated__lt=cutoff
    )
    sent = 0
    for check in lost:
        if check.attempts >= max_attempts:
            blobs.delete(check.file)  # nothing can use it now: it stops counting against the owner's storage
            UploadCheck.objects.filter(id=check.id, updated=check.updated).update(
                status=UploadCheck.Status.FAILED,
                stage="",
                problem_total=1,
                problems=[
                    f"{check.filename}: the check was interrupted {check.attempts} times; "
                    "the file may be too large for this server"
                ],
            )
            continue
        if UploadCheck.objects.filter(id=check.id, updated=check.updated).update(
            status=UploadCheck.Status.QUEUED, updated=timezone.now()
        ):
            queue.enqueue(queue.CHECK_UPLOAD, str(check.id), robust=True)
            sent += 1
    return sent


def uploads_expire(*, hours: float) -> int:
    """Forget uploads that waited (or ended) longer than `hours`: their rows and stored files, and files an
    older release parked without a row; how many files."""
    cutoff = timezone.now() - timedelta(hours=hours)
    finished = [UploadCheck.Status.READY, UploadCheck.Status.FAILED, UploadCheck.Status.NEEDS_MAPPING]
    expired = UploadCheck.objects.filter(status__in=finished, updated__lt=cutoff)
    removed = 0
    for check in expired:
        if check.file and check.status != UploadCheck.Status.READY and blobs.exists(check.file):
            blobs.delete(check.file)
            removed += 1
    expired.delete()
    return removed + _expire_unclaimed_files(cutoff.timestamp())


def _expire_unclaimed_files(cutoff: float) -> int:
    """Local parked files no row names (an older release's `{owner}-{token}` files), older than `cutoff`."""
    folder = media_path(PENDING_DIR)
    if not folder.is_dir():
        return 0
    named = set(UploadCheck.objects.exclude(file="").values_list("file", flat=True))
    stale = [
        p for p in folder.iterdir() if p.is_file() and p.stat().st_mtime < cutoff and media_relative(p) not in named
    ]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)
