"""Reads of datasets. Every selector takes the owner, so a forgotten filter is hard to write."""

from __future__ import annotations

import functools
import json

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from jobs.common import blobs
from jobs.common.ids import is_uuid
from jobs.datasets.models import Dataset, TokenProfile, UploadCheck
from worker.data.column_hints import guess_mapping
from worker.data.normalized import read_normalized_jsonl
from worker.data.report import TokenProfile as TokenCounts
from worker.data.report import TokenReport


def dataset_list(*, owner) -> QuerySet[Dataset]:
    return Dataset.objects.filter(owner=owner)


def dataset_get(*, owner, dataset_id) -> Dataset:
    """The owner's dataset, or Http404 (another user's dataset does not exist for you)."""
    return get_object_or_404(Dataset, owner=owner, id=dataset_id)


def dataset_find(*, owner, dataset_id) -> Dataset | None:
    """The owner's dataset, or None (also for a value that is not an id)."""
    return dataset_list(owner=owner).filter(id=dataset_id).first() if is_uuid(dataset_id) else None


def dataset_deduplicated_copy(*, owner, dataset: Dataset) -> Dataset | None:
    """The owner's dataset made from `dataset` by dropping its duplicates, if one exists."""
    return dataset_list(owner=owner).filter(stats__deduplicated_from=str(dataset.id)).first()


def dataset_examples(*, dataset: Dataset) -> list:
    """The dataset's examples as normalised when it was uploaded."""
    return read_normalized_jsonl(blobs.fetch(dataset.normalized_file))


def token_report_of(*, profile: TokenProfile, max_length: int, answer_tokens: int = 0) -> TokenReport | None:
    """The report for one max length (of which prompts to reward leave `answer_tokens` to their answers) from a
    ready token profile (None until it is ready): arithmetic on the stored counts, no tokenizer. The parsed
    profile is kept for a few recent datasets."""
    if profile.status != TokenProfile.Status.READY or not profile.file:
        return None
    return _token_counts(profile.id, profile.file).report(max_length, answer_tokens)


@functools.lru_cache(maxsize=16)
def _token_counts(profile_id: int, file: str) -> TokenCounts:
    """A ready profile's counts, parsed once (they never change once it is ready)."""
    return TokenCounts.from_json(json.loads(blobs.fetch(file).read_text()))


def upload_check_get(*, owner, check_id) -> UploadCheck:
    return get_object_or_404(UploadCheck, owner=owner, id=check_id)


def upload_check_find(*, owner, check_id) -> UploadCheck | None:
    """The owner's upload check with this id that has not become a dataset (None otherwise)."""
    return UploadCheck.objects.filter(owner=owner, id=check_id).exclude(status=UploadCheck.Status.READY).first()


def upload_checks_pending(*, owner) -> QuerySet[UploadCheck]:
    """The owner's uploads that have not become a dataset (waiting, being checked, refused or unmapped)."""
    return UploadCheck.objects.filter(owner=owner).exclude(status=UploadCheck.Status.READY)


def upload_check_json(check: UploadCheck) -> dict:
    """The check's state, the same for the page's poll and the REST API."""
    return {
        "id": str(check.id),
        "status": check.status,
        "stage": check.stage,
        "rows": check.rows,
        "filename": check.filename,
        "size_bytes": check.size_bytes,
        "problems": check.problems,
        "problem_total": check.problem_total,
        "columns": check.columns,
        "column_samples": check.column_samples or {},
        "suggested_mapping": guess_mapping(check.columns),
        "upload_token": check.id.hex if check.status == UploadCheck.Status.NEEDS_MAPPING else None,
        "dataset": str(check.dataset_id) if check.dataset_id else None,
        "started": check.started.isoformat() if check.started else None,
        "created": check.created.isoformat(),
    }
