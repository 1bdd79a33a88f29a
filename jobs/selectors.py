"""Reads. Every selector of user data takes the owner, so a forgotten filter is hard to write."""
from __future__ import annotations

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from jobs.models import BaseModel, ChatAnswer, ChatSession, Dataset, FineTuneJob, MetricPoint


def base_model_list() -> QuerySet[BaseModel]:
    return BaseModel.objects.all()


def dataset_list(*, owner) -> QuerySet[Dataset]:
    return Dataset.objects.filter(owner=owner)


def dataset_get(*, owner, dataset_id) -> Dataset:
    """The owner's dataset, or Http404 (another user's dataset does not exist for you)."""
    return get_object_or_404(Dataset, owner=owner, id=dataset_id)


def job_list(*, owner, status: str | None = None) -> QuerySet[FineTuneJob]:
    qs = FineTuneJob.objects.filter(owner=owner).select_related("dataset", "base_model")
    if status:
        qs = qs.filter(status=status)
    return qs


def job_get(*, owner, job_id) -> FineTuneJob:
    return get_object_or_404(job_list(owner=owner), id=job_id)


def metric_points(*, job: FineTuneJob, after_step: int = 0) -> QuerySet[MetricPoint]:
    return MetricPoint.objects.filter(job=job, step__gt=after_step).order_by("step")


def adapter_list(*, owner):
    from jobs.models import Adapter

    return Adapter.objects.filter(job__owner=owner).select_related("job__base_model").order_by("-created")


def chat_session_get(*, owner, session_id) -> ChatSession:
    return get_object_or_404(ChatSession.objects.select_related("job"), owner=owner, id=session_id)


def chat_answers(*, session: ChatSession) -> QuerySet[ChatAnswer]:
    return ChatAnswer.objects.filter(session=session).order_by("created", "side")


_report_cache: dict = {}


def dataset_token_report(*, dataset: Dataset, base_model: BaseModel, max_length: int):
    """Token lengths and rendered samples of a dataset under a base model's tokenizer (cached)."""
    from jobs.services import media_path
    from worker.data import read_normalized_jsonl
    from worker.data_report import token_report

    key = (dataset.id, dataset.sha256, base_model.id, max_length)
    if key not in _report_cache:
        tokenizer = _tokenizer(base_model.path)
        examples = read_normalized_jsonl(media_path(dataset.normalized_file))
        if len(_report_cache) > 32:
            _report_cache.clear()
        _report_cache[key] = token_report(tokenizer, examples, max_length)
    return _report_cache[key]


_tokenizers: dict = {}


def _tokenizer(path: str):
    from worker.modeling import load_tokenizer

    if path not in _tokenizers:
        _tokenizers[path] = load_tokenizer(path)
    return _tokenizers[path]
