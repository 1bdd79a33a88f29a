"""The column-mapping step. An upload whose columns match no known schema waits for its mapping as an
`UploadCheck` row (needs_mapping), small and large alike, its file stored under an opaque name; the row's id is
the upload token. Once mapped, a small file is checked during the call and a large one by the background worker.

A file parked by an older release as `datasets/pending/{owner}-{token}.<ext>` is adopted into a row the first
time its token comes back (`_adopt_legacy`), so an upload waiting across the upgrade still finishes."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from jobs.common import blobs, queue
from jobs.common.exceptions import ProductError
from jobs.common.ids import is_uuid
from jobs.common.storage import media_path
from jobs.datasets.intake import dataset_store, hidden_local_file
from jobs.datasets.models import Dataset, UploadCheck
from worker.data.column_hints import guess_mapping
from worker.data.mapping import ColumnMapping
from worker.data.problems import SchemaUnknown
from worker.errors import InputError

PENDING_DIR = "datasets/pending"  # parked uploads, each under an opaque name (older releases: {owner}-{token})


class MappingNeeded(ProductError):
    """The file is readable but its columns match no known schema: ask the user to map them."""

    status = 422
    field = "mapping"

    def __init__(
        self,
        *,
        token: str,
        filename: str,
        columns: list[str],
        message: str,
        samples: dict[str, list[str]] | None = None,
    ):
        super().__init__(message)
        self.token, self.filename, self.columns = token, filename, columns
        self.samples = samples or {}
        self.suggested = guess_mapping(columns)

    def body(self) -> dict:
        return {
            **super().body(),
            "columns": self.columns,
            "upload_token": self.token,
            "filename": self.filename,
            "column_samples": self.samples,
            "suggested_mapping": self.suggested,
        }


def parked_name(suffix: str) -> str:
    """A fresh opaque name for an upload that waits (for its check or its mapping)."""
    return f"{PENDING_DIR}/{uuid.uuid4().hex}{suffix}"


def upload_park(
    *, owner, source: Path, filename: str, name: str, size: int, drop_duplicates: bool, unknown: SchemaUnknown
) -> UploadCheck:
    """Store the local file `source` (moved) under an opaque name, as an upload waiting for its mapping."""
    check = UploadCheck(
        owner=owner,
        filename=filename[:255],
        name=name[:200],
        drop_duplicates=drop_duplicates,
        size_bytes=size,
        status=UploadCheck.Status.NEEDS_MAPPING,
        columns=list(unknown.columns),
        column_samples=unknown.samples,
        problems=[str(unknown)],
        problem_total=1,
        file=parked_name(Path(source).suffix),
    )
    with blobs.writing(check.file) as path:
        os.replace(source, path)
    check.save()
    return check


def dataset_check_now(
    *,
    owner,
    source: Path,
    filename: str,
    name: str,
    size: int,
    mapping: dict | None,
    drop_duplicates: bool,
    tokens_now: bool | None = None,
) -> Dataset:
    """Check and store a received file during the call; MappingNeeded (the file parked) when no schema matches."""
    try:
        return dataset_store(
            owner=owner,
            source=source,
            filename=filename,
            name=name,
            size=size,
            mapping=mapping,
            drop_duplicates=drop_duplicates,
            tokens_now=tokens_now,
        )
    except SchemaUnknown as exc:
        if mapping:
            raise
        check = upload_park(
            owner=owner,
            source=source,
            filename=filename,
            name=name,
            size=size,
            drop_duplicates=drop_duplicates,
            unknown=exc,
        )
        raise MappingNeeded(
            token=check.id.hex, filename=filename, columns=list(exc.columns), message=str(exc), samples=exc.samples
        ) from None


def _adopt_legacy(owner, token: str) -> UploadCheck | None:
    """A file an older release parked as `{owner}-{token}.<ext>`, moved under an opaque name into a row."""
    if not token.isalnum() or not media_path(PENDING_DIR).is_dir():
        return None
    old = next(iter(sorted(media_path(PENDING_DIR).glob(f"{owner.id}-{token}.*"))), None)
    if old is None:
        return None
    check = UploadCheck(
        owner=owner,
        filename=old.name,
        size_bytes=old.stat().st_size,
        status=UploadCheck.Status.NEEDS_MAPPING,
        file=parked_name(old.suffix),
    )
    with blobs.writing(check.file) as path:
        os.replace(old, path)
    check.save()
    return check


def _waiting_check(owner, token: str) -> UploadCheck:
    check = (
        UploadCheck.objects.filter(owner=owner, id=token, status=UploadCheck.Status.NEEDS_MAPPING).first()
        if is_uuid(token)
        else None
    )
    check = check or _adopt_legacy(owner, token)
    if check is None:
        raise InputError("token", "unknown or expired upload; upload the file again")
    return check


def dataset_create_mapped(
    *, owner, token: str, filename: str, mapping: dict, name: str = "", drop_duplicates: bool = False
) -> Dataset | UploadCheck:
    """Finish an upload that needed a column mapping (MappingNeeded, or a check in needs_mapping): checked now,
    or, for a file over DATASET_CHECK_INLINE_BYTES, by the background worker again."""
    ColumnMapping.from_dict(mapping)  # an empty or inconsistent mapping names its field before the file is read
    check = _waiting_check(owner, token)
    if check.columns:
        ColumnMapping.from_dict(mapping).check_columns(check.columns)  # refused now, not after reading the file
    fields: dict[str, Any]
    fields = dict(
        mapping=mapping,
        name=(name or check.name)[:200],
        drop_duplicates=drop_duplicates,
        attempts=0,
        stage="",
        problems=[],
        problem_total=0,
    )
    if check.size_bytes > settings.DATASET_CHECK_INLINE_BYTES:
        with transaction.atomic():
            UploadCheck.objects.filter(id=check.id).update(status=UploadCheck.Status.QUEUED, **fields)
            queue.enqueue(queue.CHECK_UPLOAD, str(check.id))
        check.refresh_from_db()
        return check
    return _check_mapped_now(check, filename=Path(filename).name or check.filename, **fields)


def _check_mapped_now(
    check: UploadCheck, *, filename: str, mapping: dict, name: str, drop_duplicates: bool, **reset
) -> Dataset:
    """The inline check of a small mapped upload; on a refusal the file keeps waiting for a better mapping."""
    if not UploadCheck.objects.filter(id=check.id, status=UploadCheck.Status.NEEDS_MAPPING).update(
        status=UploadCheck.Status.CHECKING
    ):
        raise InputError("token", "this upload is being checked already")
    work = hidden_local_file(Path(check.file).suffix)
    try:
        parked = blobs.fetch(check.file)
        if not parked.is_file():
            raise InputError("token", "the upload has expired; upload the file again")
        os.replace(parked, work)
        dataset = dataset_store(
            owner=check.owner,
            source=work,
            filename=filename,
            name=name,
            size=check.size_bytes,
            mapping=mapping,
            drop_duplicates=drop_duplicates,
            replaces=check.size_bytes,
        )
    except BaseException:
        if work.exists():
            os.replace(work, media_path(check.file))  # the local copy back (the store keeps its own)
        UploadCheck.objects.filter(id=check.id).update(status=UploadCheck.Status.NEEDS_MAPPING)
        raise
    blobs.delete(check.file)  # the file now lives on as the dataset's
    UploadCheck.objects.filter(id=check.id).update(
        status=UploadCheck.Status.READY, dataset=dataset, rows=dataset.rows, mapping=mapping, name=name, **reset
    )
    return dataset
