"""Writes for datasets: keyword-only functions that validate every row before anything is stored."""
from __future__ import annotations

import logging
import uuid
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import transaction

from accounts.limits import check_limit, storage_used
from common import blobs
from common.exceptions import ProductError, StateError
from common.storage import media_path, media_relative
from user_datasets.models import Dataset
from user_datasets.signals import dataset_deleting
from worker.config import ConfigError
from worker.data.formats import format_for_filename
from worker.data.limits import DataLimits
from worker.data.problems import DatasetError, Problem, SchemaUnknown
from worker.data.sandbox import LoadedSummary, load_dataset_file_limited

log = logging.getLogger(__name__)

DEMO_DATASET = Path(settings.BASE_DIR) / "worker" / "demo_data" / "demo_dataset.jsonl"
DEMO_DATASET_NAME = "Demo: contact details to JSON"
PENDING_DIR = "datasets/pending"


class MappingNeeded(ProductError):
    """The file is readable but its columns match no known schema: ask the user to map them."""

    status = 422
    field = "mapping"

    def __init__(self, *, token: str, filename: str, columns: list[str], message: str):
        super().__init__(message)
        self.token, self.filename, self.columns = token, filename, columns

    def body(self) -> dict:
        return {**super().body(), "columns": self.columns, "upload_token": self.token, "filename": self.filename}


class DatasetInUse(StateError):
    """A queued, running or paused job still reads this dataset."""

    field = "dataset"


def _store_upload(upload, dest: Path, limit: int, filename: str) -> int:
    """Stream the upload to dest, refusing it past `limit` bytes."""
    size = 0
    with open(dest, "wb") as out:
        for chunk in upload.chunks():
            size += len(chunk)
            if size > limit:
                raise DatasetError(filename, [Problem(0, "", f"is larger than the limit of {limit // (1024 * 1024)} MB")])
            out.write(chunk)
    return size


def dataset_limits() -> DataLimits:
    """What one uploaded file may unpack into, from the DATASET_MAX_* settings."""
    return DataLimits(max_rows=settings.DATASET_MAX_ROWS, max_field_chars=settings.DATASET_MAX_FIELD_CHARS,
                      max_total_chars=settings.DATASET_MAX_TOTAL_CHARS, max_nesting=settings.DATASET_MAX_NESTING,
                      max_columns=settings.DATASET_MAX_COLUMNS)


def dataset_validate(*, path: Path, filename: str, normalized: Path, mapping: dict | None = None,
                     drop_duplicates: bool = False) -> LoadedSummary:
    """Read and check a file with the engine's loader in a child process limited in memory and time,
    writing the normalised JSONL to `normalized`; raises DatasetError / SchemaUnknown / ConfigError."""
    return load_dataset_file_limited(path, filename, normalized_path=normalized, limits=dataset_limits(),
                                     memory_mb=settings.DATASET_PARSE_MEMORY_MB,
                                     seconds=settings.DATASET_PARSE_SECONDS, mapping=mapping or None,
                                     drop_duplicates=drop_duplicates)


def _dataset_from_file(*, owner, tmp: Path, filename: str, name: str, size: int, mapping: dict | None,
                       drop_duplicates: bool) -> Dataset:
    file_id = uuid.uuid4().hex
    final = media_path(f"datasets/{file_id}{Path(tmp).suffix}")
    normalized = media_path(f"datasets/{file_id}.normalized.jsonl")
    try:
        loaded = dataset_validate(path=tmp, filename=filename, normalized=normalized, mapping=mapping,
                                  drop_duplicates=drop_duplicates)
        tmp.replace(final)
        for path in (final, normalized):
            blobs.publish(media_relative(path))
        with transaction.atomic():
            return Dataset.objects.create(
                owner=owner, name=(name or filename)[:200], original_name=filename[:255],
                file=media_relative(final), normalized_file=media_relative(normalized),
                format=loaded.format, schema=loaded.schema, mapping=mapping or {}, rows=loaded.rows,
                size_bytes=size, sha256=loaded.sha256,
                stats={"turns": loaded.turns, "chars": loaded.chars, "columns": loaded.columns,
                       "duplicates": loaded.duplicates[:100], "duplicate_count": len(loaded.duplicates),
                       "dropped_duplicates": loaded.dropped_duplicates},
            )
    except BaseException:
        for path in (final, normalized):
            blobs.delete(media_relative(path))
        raise


def dataset_create(*, owner, upload, name: str = "", mapping: dict | None = None,
                   drop_duplicates: bool = False) -> Dataset:
    """Store an uploaded dataset under an opaque id after validating every row.

    Raises DatasetError (problems with line and field; nothing is stored), or MappingNeeded when
    no schema matches: the file then waits, under an opaque token, for `dataset_create_mapped`.
    """
    filename = Path(getattr(upload, "name", "") or "upload.jsonl").name
    check_limit(owner, "storage_bytes", used=storage_used(owner), adding=getattr(upload, "size", 0) or 0)
    format_for_filename(filename)  # refuses an extension the loader does not read, before storing a byte
    suffix = Path(filename).suffix.lower()
    folder = media_path("datasets")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{uuid.uuid4().hex}{suffix}"
    try:
        size = _store_upload(upload, tmp, settings.DATASET_MAX_BYTES, filename)
        try:
            return _dataset_from_file(owner=owner, tmp=tmp, filename=filename, name=name, size=size,
                                      mapping=mapping, drop_duplicates=drop_duplicates)
        except SchemaUnknown as exc:
            if mapping:
                raise
            token = uuid.uuid4().hex
            pending = media_path(PENDING_DIR)
            pending.mkdir(parents=True, exist_ok=True)
            tmp.replace(pending / f"{owner.id}-{token}{suffix}")
            raise MappingNeeded(token=token, filename=filename, columns=list(exc.columns), message=str(exc)) from None
    finally:
        tmp.unlink(missing_ok=True)


def _pending_file(owner, token: str) -> Path:
    if not token.isalnum():
        raise ConfigError("token", "unknown upload; upload the file again")
    matches = list(media_path(PENDING_DIR).glob(f"{owner.id}-{token}.*"))
    if not matches:
        raise ConfigError("token", "unknown or expired upload; upload the file again")
    return matches[0]


def dataset_create_mapped(*, owner, token: str, filename: str, mapping: dict, name: str = "",
                          drop_duplicates: bool = False) -> Dataset:
    """Finish an upload that needed a column mapping (see MappingNeeded)."""
    pending = _pending_file(owner, token)
    size = pending.stat().st_size
    tmp = pending.with_name(f".{uuid.uuid4().hex}{pending.suffix}")
    pending.replace(tmp)
    try:
        return _dataset_from_file(owner=owner, tmp=tmp, filename=Path(filename).name or pending.name, name=name,
                                  size=size, mapping=mapping, drop_duplicates=drop_duplicates)
    except BaseException:
        if tmp.exists():
            tmp.replace(pending)  # keep it for another try with a better mapping
        raise


def dataset_create_demo(*, owner) -> Dataset:
    """The shipped demo dataset, for the user's one-click start (reused if already added)."""
    existing = Dataset.objects.filter(owner=owner, name=DEMO_DATASET_NAME).first()
    if existing:
        return existing
    with open(DEMO_DATASET, "rb") as fh:
        return dataset_create(owner=owner, upload=File(fh, name=DEMO_DATASET.name), name=DEMO_DATASET_NAME)


def dataset_rename(*, dataset: Dataset, name: str) -> Dataset:
    name = name.strip()
    if not name:
        raise ConfigError("name", "must not be empty")
    if len(name) > 200:
        raise ConfigError("name", "must be at most 200 characters")
    dataset.name = name
    dataset.save(update_fields=["name"])
    return dataset


def dataset_delete(*, dataset: Dataset) -> None:
    """Delete the row and its files; refused (DatasetInUse) while another domain still needs it."""
    dataset_deleting.send(sender=Dataset, dataset=dataset)
    files = [dataset.file] + ([dataset.normalized_file] if dataset.normalized_file else [])
    for name in files:
        media_path(name)  # a stored path that leaves the media folder is refused before anything is deleted
    with transaction.atomic():
        dataset.delete()
        transaction.on_commit(lambda: [blobs.delete(name) for name in files])
