"""How a file becomes a Dataset: received under a hidden name (size-capped, after the quota and the extension are
checked), checked with the engine's loader in a capped child process, and stored under an opaque id with its
normalised examples beside it. The uploads, the mapping step and the product's own datasets all come through here."""

from __future__ import annotations

import os
import uuid
from contextlib import nullcontext
from pathlib import Path

from django.conf import settings
from django.db import transaction

from jobs.accounts.limits import check_limit, storage_used
from jobs.common import blobs
from jobs.common.storage import media_path
from jobs.datasets.models import Dataset
from jobs.datasets.parse_slots import parse_slot
from jobs.datasets.token_profiles import tokens_count_for_default_model
from worker.data.formats import format_for_filename
from worker.data.limits import DataLimits
from worker.data.problems import DatasetError, Problem
from worker.data.sandbox import LoadedSummary, load_dataset_file_limited


def dataset_limits() -> DataLimits:
    """What one uploaded file may unpack into, from the DATASET_MAX_* settings."""
    return DataLimits(
        max_rows=settings.DATASET_MAX_ROWS,
        max_field_chars=settings.DATASET_MAX_FIELD_CHARS,
        max_total_chars=settings.DATASET_MAX_TOTAL_CHARS,
        max_nesting=settings.DATASET_MAX_NESTING,
        max_columns=settings.DATASET_MAX_COLUMNS,
    )


def dataset_validate(
    *,
    path: Path,
    filename: str,
    normalized: Path,
    mapping: dict | None = None,
    drop_duplicates: bool = False,
    on_progress=None,
) -> LoadedSummary:
    """Read and check a file with the engine's loader in a child process limited in memory and time,
    writing the normalised JSONL to `normalized`; raises DatasetError / SchemaUnknown / InputError."""
    return load_dataset_file_limited(
        path,
        filename,
        normalized_path=normalized,
        limits=dataset_limits(),
        memory_mb=settings.DATASET_PARSE_MEMORY_MB,
        seconds=settings.DATASET_PARSE_SECONDS,
        mapping=mapping or None,
        drop_duplicates=drop_duplicates,
        on_progress=on_progress,
    )


def dataset_store(
    *,
    owner,
    source: Path,
    filename: str,
    name: str,
    size: int,
    mapping: dict | None = None,
    drop_duplicates: bool = False,
    on_progress=None,
    extra_stats: dict | None = None,
    tokens_now: bool | None = None,
    background: bool = False,
    dataset_id: uuid.UUID | None = None,
    replaces: int = 0,
) -> Dataset:
    """Check the local file `source` and store it (it is moved into place) as a new Dataset. Its tokens are
    counted with the default model's tokenizer during the call for a file up to DATASET_CHECK_INLINE_BYTES
    (or `tokens_now`), else by a background worker. Raises what dataset_validate raises, or QuotaExceeded when
    the file and its normalised examples would pass the owner's storage (less `replaces`, the bytes of the
    pending upload this dataset takes the place of); nothing stays stored.
    During a request (not `background`: a worker's concurrency bounds its own) the check holds a parse slot,
    Busy (429) when the owner or the server has none free. `dataset_id`: the new row's id (a background check's,
    so the id a client was given for the upload names the dataset it becomes)."""
    file_id = uuid.uuid4().hex
    original, normalized_name = f"datasets/{file_id}{Path(source).suffix}", f"datasets/{file_id}.normalized.jsonl"
    try:
        slot = nullcontext() if background else parse_slot(owner)
        with slot, blobs.writing(normalized_name) as normalized, blobs.writing(original) as final:
            loaded = dataset_validate(
                path=source,
                filename=filename,
                normalized=normalized,
                mapping=mapping,
                drop_duplicates=drop_duplicates,
                on_progress=on_progress,
            )
            # Charged as stored (an 800-byte Parquet may normalise to megabytes), checked before anything moves.
            charge = normalized.stat().st_size + Path(source).stat().st_size
            check_limit(owner, "storage_bytes", used=storage_used(owner) - replaces, adding=charge)
            os.replace(source, final)
        with transaction.atomic():
            dataset = Dataset.objects.create(
                id=dataset_id or uuid.uuid4(),
                owner=owner,
                name=(name or filename)[:200],
                original_name=filename[:255],
                file=original,
                normalized_file=normalized_name,
                format=loaded.format,
                schema=loaded.schema,
                mapping=mapping or {},
                rows=loaded.rows,
                size_bytes=size,
                stored_bytes=blobs.stored_bytes(original, normalized_name),
                sha256=loaded.sha256,
                stats={
                    "turns": loaded.turns,
                    "chars": loaded.chars,
                    "columns": loaded.columns,
                    "duplicates": loaded.duplicates[:100],
                    "duplicate_count": len(loaded.duplicates),
                    "dropped_duplicates": loaded.dropped_duplicates,
                    **(extra_stats or {}),
                },
            )
    except BaseException:
        for stored in (original, normalized_name):
            blobs.delete(stored)
        raise
    now = tokens_now if tokens_now is not None else size <= settings.DATASET_CHECK_INLINE_BYTES
    tokens_count_for_default_model(dataset, now=now)
    return dataset


def _stream_to(upload, dest: Path, limit: int, filename: str) -> int:
    """Stream the upload to dest, refusing it past `limit` bytes."""
    size = 0
    with open(dest, "wb") as out:
        for chunk in upload.chunks():
            size += len(chunk)
            if size > limit:
                raise DatasetError(
                    filename, [Problem(0, "", f"is larger than the limit of {limit // (1024 * 1024)} MB")]
                )
            out.write(chunk)
    return size


def upload_receive(owner, upload) -> tuple[Path, str, int]:
    """Store an upload under a hidden temporary name (size-capped while streaming, after the quota and the
    extension are checked); the caller removes or moves it. Returns (path, filename, size)."""
    filename = Path(getattr(upload, "name", "") or "upload.jsonl").name
    check_limit(owner, "storage_bytes", used=storage_used(owner), adding=getattr(upload, "size", 0) or 0)
    format_for_filename(filename)  # refuses an extension the loader does not read, before storing a byte
    tmp = hidden_local_file(Path(filename).suffix.lower())
    try:
        return tmp, filename, _stream_to(upload, tmp, settings.DATASET_MAX_BYTES, filename)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def hidden_local_file(suffix: str) -> Path:
    """A fresh hidden path in the local datasets folder (never published: dot-named)."""
    folder = media_path("datasets")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".{uuid.uuid4().hex}{suffix}"
