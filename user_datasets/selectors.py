"""Reads of datasets. Every selector takes the owner, so a forgotten filter is hard to write."""
from __future__ import annotations

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from base_models.models import BaseModel
from common.ids import is_uuid
from common import blobs
from user_datasets.models import Dataset
from worker.data.normalized import read_normalized_jsonl
from worker.data.report import token_report
from worker.modeling import cached_tokenizer


def dataset_list(*, owner) -> QuerySet[Dataset]:
    return Dataset.objects.filter(owner=owner)


def dataset_get(*, owner, dataset_id) -> Dataset:
    """The owner's dataset, or Http404 (another user's dataset does not exist for you)."""
    return get_object_or_404(Dataset, owner=owner, id=dataset_id)


def dataset_find(*, owner, dataset_id) -> Dataset | None:
    """The owner's dataset, or None (also for a value that is not an id)."""
    return dataset_list(owner=owner).filter(id=dataset_id).first() if is_uuid(dataset_id) else None


def dataset_examples(*, dataset: Dataset) -> list:
    """The dataset's examples as normalised when it was uploaded."""
    return read_normalized_jsonl(blobs.fetch(dataset.normalized_file))


_report_cache: dict = {}


def dataset_token_report(*, dataset: Dataset, base_model: BaseModel, max_length: int):
    """Token lengths and rendered samples of a dataset under a base model's tokenizer (cached)."""
    key = (dataset.id, dataset.sha256, base_model.id, max_length)
    if key not in _report_cache:
        if len(_report_cache) > 32:
            _report_cache.clear()
        _report_cache[key] = token_report(cached_tokenizer(base_model.local_path), dataset_examples(dataset=dataset),
                                          max_length)
    return _report_cache[key]
