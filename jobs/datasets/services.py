"""Writes for datasets: keyword-only functions that validate every row before anything is stored."""
from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from jobs.accounts.limits import check_limit, storage_used
from jobs.base_models.selectors import base_model_list
from jobs.common import queue
from jobs.common import blobs
from jobs.common.exceptions import ProductError, StateError
from jobs.common.ids import is_uuid
from jobs.common.storage import media_path, media_relative
from jobs.datasets import selectors
from jobs.datasets.models import Dataset, TokenProfile, UploadCheck
from jobs.datasets.signals import dataset_deleting
from worker.errors import InputError
from worker.data.column_hints import guess_mapping
from worker.data.examples import Example
from worker.data.formats import format_for_filename
from worker.data.limits import DataLimits
from worker.data.loading import deduplicate_examples
from worker.data.mapping import ColumnMapping
from worker.data.normalized import write_normalized_jsonl
from worker.data.problems import DatasetError, Problem, SchemaUnknown
from worker.data.report import token_profile
from worker.data.sandbox import LoadedSummary, load_dataset_file_limited
from worker.modeling import TOKENIZER_FILES, cached_tokenizer, tokenizer_fingerprint

log = logging.getLogger(__name__)

DEMO_DATASET = Path(settings.BASE_DIR) / "worker" / "demo_data" / "demo_dataset.jsonl"
DEMO_DATASET_NAME = "Demo: contact details to JSON"
PENDING_DIR = "datasets/pending"
TOKEN_PROFILE_LIMIT = 5000  # examples counted for the check page and the estimate
TOKEN_PROFILE_SAMPLES = 50  # examples rendered token by token for the check page's pages of examples


class MappingNeeded(ProductError):
    """The file is readable but its columns match no known schema: ask the user to map them."""

    status = 422
    field = "mapping"

    def __init__(self, *, token: str, filename: str, columns: list[str], message: str,
                 samples: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.token, self.filename, self.columns = token, filename, columns
        self.samples = samples or {}
        self.suggested = guess_mapping(columns)

    def body(self) -> dict:
        return {**super().body(), "columns": self.columns, "upload_token": self.token, "filename": self.filename,
                "column_samples": self.samples, "suggested_mapping": self.suggested}


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
                     drop_duplicates: bool = False, on_progress=None) -> LoadedSummary:
    """Read and check a file with the engine's loader in a child process limited in memory and time,
    writing the normalised JSONL to `normalized`; raises DatasetError / SchemaUnknown / InputError."""
    return load_dataset_file_limited(path, filename, normalized_path=normalized, limits=dataset_limits(),
                                     memory_mb=settings.DATASET_PARSE_MEMORY_MB,
                                     seconds=settings.DATASET_PARSE_SECONDS, mapping=mapping or None,
                                     drop_duplicates=drop_duplicates, on_progress=on_progress)


def _dataset_from_file(*, owner, tmp: Path, filename: str, name: str, size: int, mapping: dict | None,
                       drop_duplicates: bool, on_progress=None, extra_stats: dict | None = None) -> Dataset:
    file_id = uuid.uuid4().hex
    final = media_path(f"datasets/{file_id}{Path(tmp).suffix}")
    normalized = media_path(f"datasets/{file_id}.normalized.jsonl")
    try:
        loaded = dataset_validate(path=tmp, filename=filename, normalized=normalized, mapping=mapping,
                                  drop_duplicates=drop_duplicates, on_progress=on_progress)
        tmp.replace(final)
        for path in (final, normalized):
            blobs.publish(media_relative(path))
        with transaction.atomic():
            dataset = Dataset.objects.create(
                owner=owner, name=(name or filename)[:200], original_name=filename[:255],
                file=media_relative(final), normalized_file=media_relative(normalized),
                format=loaded.format, schema=loaded.schema, mapping=mapping or {}, rows=loaded.rows,
                size_bytes=size, sha256=loaded.sha256,
                stats={"turns": loaded.turns, "chars": loaded.chars, "columns": loaded.columns,
                       "duplicates": loaded.duplicates[:100], "duplicate_count": len(loaded.duplicates),
                       "dropped_duplicates": loaded.dropped_duplicates, **(extra_stats or {})},
            )
            _count_tokens_for_default_model(dataset)
            return dataset
    except BaseException:
        for path in (final, normalized):
            blobs.delete(media_relative(path))
        raise


def _receive(owner, upload) -> tuple[Path, str, int]:
    """Store an upload under a hidden temporary name (size-capped while streaming, after the quota and
    the extension are checked); the caller removes or moves it. Returns (path, filename, size)."""
    filename = Path(getattr(upload, "name", "") or "upload.jsonl").name
    check_limit(owner, "storage_bytes", used=storage_used(owner), adding=getattr(upload, "size", 0) or 0)
    format_for_filename(filename)  # refuses an extension the loader does not read, before storing a byte
    folder = media_path("datasets")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{uuid.uuid4().hex}{Path(filename).suffix.lower()}"
    try:
        return tmp, filename, _store_upload(upload, tmp, settings.DATASET_MAX_BYTES, filename)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pending_path(owner, token: str, suffix: str) -> Path:
    folder = media_path(PENDING_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{owner.id}-{token}{suffix}"


def _check_now(*, owner, tmp: Path, filename: str, name: str, size: int, mapping: dict | None,
               drop_duplicates: bool) -> Dataset:
    try:
        return _dataset_from_file(owner=owner, tmp=tmp, filename=filename, name=name, size=size,
                                  mapping=mapping, drop_duplicates=drop_duplicates)
    except SchemaUnknown as exc:
        if mapping:
            raise
        token = uuid.uuid4().hex
        tmp.replace(_pending_path(owner, token, tmp.suffix))
        raise MappingNeeded(token=token, filename=filename, columns=list(exc.columns), message=str(exc),
                            samples=exc.samples) from None


def dataset_create(*, owner, upload, name: str = "", mapping: dict | None = None,
                   drop_duplicates: bool = False) -> Dataset:
    """Store an uploaded dataset under an opaque id after validating every row, during the call.

    Raises DatasetError (problems with line and field; nothing is stored), or MappingNeeded when
    no schema matches: the file then waits, under an opaque token, for `dataset_create_mapped`.
    """
    tmp, filename, size = _receive(owner, upload)
    try:
        return _check_now(owner=owner, tmp=tmp, filename=filename, name=name, size=size, mapping=mapping,
                          drop_duplicates=drop_duplicates)
    finally:
        tmp.unlink(missing_ok=True)


def dataset_upload(*, owner, upload, name: str = "", mapping: dict | None = None,
                   drop_duplicates: bool = False) -> Dataset | UploadCheck:
    """The upload pages' entry: a file up to DATASET_CHECK_INLINE_BYTES is checked during the request
    (as `dataset_create`); a larger one is only stored here and checked by a background worker, whose
    progress the returned UploadCheck shows."""
    tmp, filename, size = _receive(owner, upload)
    try:
        if size <= settings.DATASET_CHECK_INLINE_BYTES:
            return _check_now(owner=owner, tmp=tmp, filename=filename, name=name, size=size, mapping=mapping,
                              drop_duplicates=drop_duplicates)
        check = UploadCheck(owner=owner, filename=filename[:255], name=name[:200], mapping=mapping or {},
                            drop_duplicates=drop_duplicates, size_bytes=size)
        pending = _pending_path(owner, check.id.hex, tmp.suffix)
        tmp.replace(pending)
        check.file = media_relative(pending)
        blobs.publish(check.file)  # the background worker may run on another machine
        with transaction.atomic():
            check.save()
            queue.enqueue(queue.CHECK_UPLOAD, str(check.id))
        return check
    finally:
        tmp.unlink(missing_ok=True)


def _pending_file(owner, token: str) -> Path:
    if not token.isalnum():
        raise InputError("token", "unknown upload; upload the file again")
    matches = list(media_path(PENDING_DIR).glob(f"{owner.id}-{token}.*"))
    if not matches:
        raise InputError("token", "unknown or expired upload; upload the file again")
    return matches[0]


def dataset_create_mapped(*, owner, token: str, filename: str, mapping: dict, name: str = "",
                          drop_duplicates: bool = False) -> Dataset | UploadCheck:
    """Finish an upload that needed a column mapping (see MappingNeeded and UploadCheck.NEEDS_MAPPING):
    checked now, or, for a file over DATASET_CHECK_INLINE_BYTES, by the background worker again."""
    ColumnMapping.from_dict(mapping)  # an empty or inconsistent mapping names its field before the file is read
    check = UploadCheck.objects.filter(owner=owner, id=token, status=UploadCheck.Status.NEEDS_MAPPING).first() \
        if is_uuid(token) else None
    if check is not None and check.size_bytes > settings.DATASET_CHECK_INLINE_BYTES:
        ColumnMapping.from_dict(mapping).check_columns(check.columns)  # refused now, not after the queue
        with transaction.atomic():
            UploadCheck.objects.filter(id=check.id).update(
                status=UploadCheck.Status.QUEUED, mapping=mapping, name=(name or check.name)[:200],
                drop_duplicates=drop_duplicates, attempts=0, stage="", problems=[], problem_total=0)
            queue.enqueue(queue.CHECK_UPLOAD, str(check.id))
        check.refresh_from_db()
        return check
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


def dataset_create_from_examples(*, owner, examples: list[Example], name: str, filename: str,
                                 extra_stats: dict | None = None) -> Dataset:
    """A dataset the product makes (from compare votes, say) rather than one uploaded: the examples are
    written as normalised JSONL, which is then checked and stored exactly as an upload of that file.
    `extra_stats` (where the examples came from) is kept in the dataset's stats."""
    folder = media_path("datasets")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{uuid.uuid4().hex}.jsonl"
    try:
        write_normalized_jsonl(examples, tmp)
        size = tmp.stat().st_size
        check_limit(owner, "storage_bytes", used=storage_used(owner), adding=size)
        return _dataset_from_file(owner=owner, tmp=tmp, filename=filename, name=name, size=size, mapping=None,
                                  drop_duplicates=False, extra_stats=extra_stats)
    finally:
        tmp.unlink(missing_ok=True)


DEDUPLICATED_SUFFIX = " (deduplicated)"


class NoDuplicates(StateError):
    """The dataset holds no repeated example, so there is nothing to drop."""

    field = "dataset"


def dataset_deduplicate(*, dataset: Dataset) -> Dataset:
    """A new dataset "<name> (deduplicated)" holding each example of `dataset` once (its first occurrence).
    The original stays as it is, since jobs and evaluations refer to it; asking again returns the copy
    already made. NoDuplicates when there is nothing to drop."""
    existing = selectors.dataset_deduplicated_copy(owner=dataset.owner, dataset=dataset)
    if existing is not None:
        return existing
    kept, duplicates = deduplicate_examples(selectors.dataset_examples(dataset=dataset), drop=True)
    if not duplicates:
        raise NoDuplicates(f"{dataset.name} has no duplicated examples to drop")
    stem = Path(dataset.original_name or "dataset").stem
    return dataset_create_from_examples(
        owner=dataset.owner, examples=kept,
        name=dataset.name[:200 - len(DEDUPLICATED_SUFFIX)] + DEDUPLICATED_SUFFIX,
        filename=f"{stem}.deduplicated.jsonl",
        extra_stats={"source": "deduplicated", "deduplicated_from": str(dataset.id),
                     "dropped_duplicates": len(duplicates)})


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
        raise InputError("name", "must not be empty")
    if len(name) > 200:
        raise InputError("name", "must be at most 200 characters")
    dataset.name = name
    dataset.save(update_fields=["name"])
    return dataset


def dataset_delete(*, dataset: Dataset) -> None:
    """Delete the row and its files; refused (DatasetInUse) while another domain still needs it."""
    dataset_deleting.send(sender=Dataset, dataset=dataset)
    files = [dataset.file] + ([dataset.normalized_file] if dataset.normalized_file else [])
    files += list(dataset.token_profiles.exclude(file="").values_list("file", flat=True))
    for name in files:
        media_path(name)  # a stored path that leaves the media folder is refused before anything is deleted
    with transaction.atomic():
        dataset.delete()
        transaction.on_commit(lambda: [blobs.delete(name) for name in files])


# --- the background check of a large upload --------------------------------------------------------

def upload_check_run(*, check_id) -> str:
    """Check a stored upload (the background task's body): it becomes a Dataset, or the check records
    the located problems, or the columns to map. A check another run already took is skipped."""
    taken = UploadCheck.objects.filter(id=check_id, status=UploadCheck.Status.QUEUED).update(
        status=UploadCheck.Status.CHECKING, started=timezone.now(), stage="starting", attempts=F("attempts") + 1)
    if not taken:
        return "skipped"
    check = UploadCheck.objects.select_related("owner").get(id=check_id)
    path = blobs.fetch(check.file)  # stored by the web host that took the upload

    def progress(stage: str, rows: int) -> None:
        UploadCheck.objects.filter(id=check.id, status=UploadCheck.Status.CHECKING).update(
            stage=stage, rows=rows, updated=timezone.now())

    def finish(status, **fields) -> str:
        UploadCheck.objects.filter(id=check.id).update(status=status, **fields)
        return status

    if not path.is_file():
        return finish(UploadCheck.Status.FAILED, stage="", problems=[
            f"{check.filename}: the stored upload has expired; upload the file again"], problem_total=1)
    work = path.with_name(f".{uuid.uuid4().hex}{path.suffix}")
    path.replace(work)  # _dataset_from_file moves its input into place on success
    try:
        dataset = _dataset_from_file(owner=check.owner, tmp=work, filename=check.filename, name=check.name,
                                     size=check.size_bytes, mapping=check.mapping or None,
                                     drop_duplicates=check.drop_duplicates, on_progress=progress)
    except SchemaUnknown as exc:
        if check.mapping:
            _drop(work, check.file)
            return finish(UploadCheck.Status.FAILED, stage="", problems=exc.messages(), problem_total=exc.total)
        work.replace(path)  # parked under the check's id (and still in the store): the mapping step's token
        return finish(UploadCheck.Status.NEEDS_MAPPING, stage="", columns=list(exc.columns),
                      column_samples=exc.samples, problems=[str(exc)], problem_total=1)
    except DatasetError as exc:
        _drop(work, check.file)
        return finish(UploadCheck.Status.FAILED, stage="", problems=exc.messages(), problem_total=exc.total)
    except InputError as exc:
        _drop(work, check.file)
        return finish(UploadCheck.Status.FAILED, stage="", problems=[f"{exc.field}: {exc.message}"], problem_total=1)
    except Exception:
        log.exception("upload check %s failed", check.id)
        _drop(work, check.file)
        return finish(UploadCheck.Status.FAILED, stage="", problem_total=1,
                      problems=[f"{check.filename}: the check failed unexpectedly; upload the file again"])
    blobs.delete(check.file)  # the file now lives on as the dataset's
    return finish(UploadCheck.Status.READY, stage="", rows=dataset.rows, dataset=dataset)


def _drop(work: Path, stored: str) -> None:
    """Forget a refused upload: the local working copy and the stored one."""
    work.unlink(missing_ok=True)
    blobs.delete(stored)


def upload_checks_resend(*, stale_seconds: float, max_attempts: int = 3) -> int:
    """Re-queue checks whose run was lost (its worker died) or whose message was; how many. A check
    that was lost `max_attempts` times fails instead of crashing workers for ever."""
    cutoff = timezone.now() - timedelta(seconds=stale_seconds)
    lost = UploadCheck.objects.filter(status__in=[UploadCheck.Status.QUEUED, UploadCheck.Status.CHECKING],
                                      updated__lt=cutoff)
    sent = 0
    for check in lost:
        if check.attempts >= max_attempts:
            UploadCheck.objects.filter(id=check.id, updated=check.updated).update(
                status=UploadCheck.Status.FAILED, stage="", problem_total=1,
                problems=[f"{check.filename}: the check was interrupted {check.attempts} times; "
                          "the file may be too large for this server"])
            continue
        if UploadCheck.objects.filter(id=check.id, updated=check.updated).update(
                status=UploadCheck.Status.QUEUED, updated=timezone.now()):
            queue.enqueue(queue.CHECK_UPLOAD, str(check.id), robust=True)
            sent += 1
    return sent


# --- token counts: once per (dataset, tokenizer), in a background worker ---------------------------

def _count_tokens_for_default_model(dataset: Dataset) -> None:
    """Start counting a new dataset's tokens with the first base model's tokenizer (the check page's
    and the job form's default), so that they are usually ready when first looked at."""
    first = base_model_list(owner=dataset.owner).first()
    if first is not None:
        try:
            token_profile_request(dataset=dataset, model_path=first.path)
        except OSError:
            log.warning("could not start counting tokens of %s with %s", dataset.id, first.path)


def token_profile_request(*, dataset: Dataset, model_path: str) -> TokenProfile:
    """The dataset's token profile under this model's tokenizer; a new one is queued for a worker. For a
    model in object storage only its tokenizer files come to this (web) machine, never the weights."""
    key = tokenizer_fingerprint(blobs.model_local_path(model_path, only=TOKENIZER_FILES))
    profile = TokenProfile.objects.filter(dataset=dataset, tokenizer_key=key).first()
    if profile is not None:
        return profile
    try:
        with transaction.atomic():
            profile = TokenProfile.objects.create(dataset=dataset, tokenizer_key=key, model_path=model_path,
                                                  total=min(dataset.rows, TOKEN_PROFILE_LIMIT))
    except IntegrityError:  # another request queued it a moment ago
        return TokenProfile.objects.get(dataset=dataset, tokenizer_key=key)
    queue.enqueue(queue.TOKEN_PROFILE, profile.id, robust=True)
    return profile


def token_profile_compute(*, profile_id: int) -> str:
    """Count the tokens (the background task's body); writes the profile's JSON file, then marks it ready."""
    from worker.data.normalized import read_normalized_jsonl

    profile = TokenProfile.objects.select_related("dataset").filter(id=profile_id).first()
    if profile is None or profile.status != TokenProfile.Status.PENDING:
        return "skipped"

    def progress(done: int, total: int) -> None:
        TokenProfile.objects.filter(id=profile.id).update(done=done, total=total, updated=timezone.now())

    try:
        examples = read_normalized_jsonl(blobs.fetch(profile.dataset.normalized_file))
        result = token_profile(cached_tokenizer(blobs.model_local_path(profile.model_path, only=TOKENIZER_FILES)),
                               examples, samples=TOKEN_PROFILE_SAMPLES,
                               limit=TOKEN_PROFILE_LIMIT, progress=progress)
    except (ValueError, OSError) as exc:
        log.warning("token profile %s failed: %s", profile.id, exc)
        message = str(exc) if isinstance(exc, ValueError) else "the dataset or the model's tokenizer could not be read"
        TokenProfile.objects.filter(id=profile.id).update(status=TokenProfile.Status.FAILED, error=message[:500])
        return "failed"
    relative = f"datasets/tokens/{profile.dataset_id}-{profile.tokenizer_key}.json"
    final = media_path(relative)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{uuid.uuid4().hex}.json")
    tmp.write_text(json.dumps(result.to_json()))
    os.replace(tmp, final)
    blobs.publish(relative)
    TokenProfile.objects.filter(id=profile.id).update(status=TokenProfile.Status.READY, file=relative,
                                                      done=len(result.lengths), total=len(result.lengths))
    return "ready"


def token_profiles_resend(*, stale_seconds: float) -> int:
    """Re-queue pending profiles nobody has advanced for `stale_seconds` (a lost message or worker)."""
    cutoff = timezone.now() - timedelta(seconds=stale_seconds)
    stale = list(TokenProfile.objects.filter(status=TokenProfile.Status.PENDING, updated__lt=cutoff)
                 .values_list("id", flat=True))
    for profile_id in stale:
        TokenProfile.objects.filter(id=profile_id).update(updated=timezone.now())
        queue.enqueue(queue.TOKEN_PROFILE, profile_id, robust=True)
    return len(stale)


def dataset_token_report(*, dataset: Dataset, model_path: str, max_length: int):
    """(the TokenReport for this max length, or None while the tokens are being counted; the profile)."""
    profile = token_profile_request(dataset=dataset, model_path=model_path)
    return selectors.token_report_of(profile=profile, max_length=max_length), profile
