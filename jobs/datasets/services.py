"""Writes for datasets: keyword-only functions that validate every row before anything is stored. Uploads
and their background checks live in `uploads`, the column-mapping step in `mapping`, token counts in
`token_profiles`; how a file becomes a Dataset in `intake`."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import transaction

from jobs.accounts.limits import check_limit, storage_used
from jobs.common import blobs
from jobs.common.exceptions import StateError
from jobs.common.storage import media_path
from jobs.datasets import selectors
from jobs.datasets.intake import dataset_store, hidden_local_file, upload_receive
from jobs.datasets.mapping import dataset_check_now
from jobs.datasets.models import Dataset
from jobs.datasets.signals import dataset_deleting
from worker.data.examples import Example
from worker.data.loading import deduplicate_examples
from worker.data.normalized import write_normalized_jsonl
from worker.errors import InputError

DEMO_DATASET = Path(settings.BASE_DIR) / "worker" / "demo_data" / "demo_dataset.jsonl"
DEMO_DATASET_NAME = "Demo: contact details to JSON"
DEDUPLICATED_SUFFIX = " (deduplicated)"


class DatasetInUse(StateError):
    """A queued, running or paused job still reads this dataset."""

    field = "dataset"


class NoDuplicates(StateError):
    """The dataset holds no repeated example, so there is nothing to drop."""

    field = "dataset"


def dataset_create(
    *,
    owner,
    upload,
    name: str = "",
    mapping: dict | None = None,
    drop_duplicates: bool = False,
    tokens_now: bool | None = None,
) -> Dataset:
    """Store an uploaded dataset under an opaque id after validating every row, during the call.

    Raises DatasetError (problems with line and field; nothing is stored), or MappingNeeded when
    no schema matches: the file then waits, as an UploadCheck, for `mapping.dataset_create_mapped`.
    `tokens_now`: count its tokens during the call whatever its size (see intake.dataset_store).
    """
    tmp, filename, size = upload_receive(owner, upload)
    try:
        return dataset_check_now(
            owner=owner,
            source=tmp,
            filename=filename,
            name=name,
            size=size,
            mapping=mapping,
            drop_duplicates=drop_duplicates,
            tokens_now=tokens_now,
        )
    finally:
        tmp.unlink(missing_ok=True)


def dataset_create_from_examples(
    *, owner, examples: list[Example], name: str, filename: str, extra_stats: dict | None = None
) -> Dataset:
    """A dataset the product makes (from compare votes, say) rather than one uploaded: the examples are
    written as normalised JSONL, which is then checked and stored exactly as an upload of that file.
    `extra_stats` (where the examples came from) is kept in the dataset's stats."""
    tmp = hidden_local_file(".jsonl")
    try:
        write_normalized_jsonl(examples, tmp)
        size = tmp.stat().st_size
        check_limit(owner, "storage_bytes", used=storage_used(owner), adding=size)
        return dataset_store(owner=owner, source=tmp, filename=filename, name=name, size=size, extra_stats=extra_stats)
    finally:
        tmp.unlink(missing_ok=True)


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
        owner=dataset.owner,
        examples=kept,
        name=dataset.name[: 200 - len(DEDUPLICATED_SUFFIX)] + DEDUPLICATED_SUFFIX,
        filename=f"{stem}.deduplicated.jsonl",
        extra_stats={
            "source": "deduplicated",
            "deduplicated_from": str(dataset.id),
            "dropped_duplicates": len(duplicates),
        },
    )


def dataset_create_demo(*, owner) -> Dataset:
    """The shipped demo dataset, for the user's one-click start (reused if already added); its tokens are
    counted during the call, so the first estimate knows its lengths."""
    existing = Dataset.objects.filter(owner=owner, name=DEMO_DATASET_NAME).first()
    if existing:
        return existing
    with open(DEMO_DATASET, "rb") as fh:
        return dataset_create(
            owner=owner, upload=File(fh, name=DEMO_DATASET.name), name=DEMO_DATASET_NAME, tokens_now=True
        )


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

        def delete_files() -> None:
            for name in files:
                blobs.delete(name)

        transaction.on_commit(delete_files)
