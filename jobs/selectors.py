"""Reads. Every selector of user data takes the owner, so a forgotten filter is hard to write."""
from __future__ import annotations

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from jobs.models import (BaseModel, ChatAnswer, ChatRound, ChatSession, Dataset, FineTuneJob, MetricPoint, Vote,
                         Webhook, WebhookDelivery)


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
    return ChatAnswer.objects.filter(session=session).select_related(
        "round__vote", "job", "session__job__base_model", "session__base_model").order_by("created", "position", "side")


def chat_round_get(*, owner, round_id) -> ChatRound:
    """The owner's comparison round, or Http404."""
    return get_object_or_404(ChatRound.objects.select_related("session__job__base_model", "session__base_model"),
                             session__owner=owner, id=round_id)


def compare_candidates(*, owner, base_model: BaseModel) -> QuerySet[FineTuneJob]:
    """The owner's finished adapters on `base_model`: what can stand beside the base on the compare page."""
    return job_list(owner=owner, status="succeeded").filter(base_model=base_model, adapter__isnull=False)


def model_identity(*, job: FineTuneJob | None, base_model: BaseModel) -> dict:
    """Who answered: the base model alone (job None) or a job's adapter, as kind, id and a display name."""
    if job is None:
        return {"kind": "base", "id": str(base_model.id), "name": f"{base_model.name} (base)"}
    return {"kind": "adapter", "id": str(job.id), "name": f"{job.name} ({job.short_id})" if job.name else
            f"job {job.short_id}"}


def answer_hidden(answer: ChatAnswer) -> bool:
    """A blind round's answers keep their model secret until the round has a vote."""
    return answer.round is not None and answer.round.blind and not hasattr(answer.round, "vote")


def answer_event_meta(answer: ChatAnswer) -> dict:
    """What live chat events say about an answer: its id and column, and its side unless hidden."""
    meta = {"answer": str(answer.id), "position": answer.position}
    if not answer_hidden(answer):
        meta["side"] = answer.side
    return meta


def chat_round_slots(*, chat_round: ChatRound) -> list[dict]:
    """The round's answers left to right, each with its model, or None while the round is blind."""
    base = chat_round.session.job.base_model if chat_round.session.job_id else chat_round.session.base_model
    answers = chat_round.answers.select_related("job", "round__vote").order_by("position")
    return [{"answer": str(a.id), "position": a.position, "state": a.state,
             "model": None if answer_hidden(a) else model_identity(job=a.job, base_model=base)} for a in answers]


def vote_win_rates(*, owner, base_model: BaseModel | None = None) -> list[dict]:
    """The owner's votes as one row per pair of models (see jobs.win_rate for the counting)."""
    from jobs.win_rate import win_rate_table

    votes = Vote.objects.filter(owner=owner).select_related("base_model", "first_job", "second_job").order_by("created")
    if base_model is not None:
        votes = votes.filter(base_model=base_model)
    identities: dict[str, dict] = {}

    def key(job, base) -> str:
        identity = model_identity(job=job, base_model=base)
        identities.setdefault(identity["id"], identity)
        return identity["id"]

    table = win_rate_table((key(v.first_job, v.base_model), key(v.second_job, v.base_model), v.result) for v in votes)
    rows = []
    for record in table:
        low, high = record.interval
        rows.append({"model": identities[record.first], "opponent": identities[record.second], "wins": record.wins,
                     "losses": record.losses, "ties": record.ties, "both_bad": record.both_bad, "n": record.n,
                     "win_rate": record.win_rate, "ci_low": low, "ci_high": high})
    return rows


def webhook_list(*, owner) -> QuerySet[Webhook]:
    return Webhook.objects.filter(owner=owner)


def webhook_get(*, owner, webhook_id) -> Webhook:
    """The owner's webhook, or Http404 (another user's webhook does not exist for you)."""
    return get_object_or_404(webhook_list(owner=owner), id=webhook_id)


def webhook_deliveries(*, webhook: Webhook) -> QuerySet[WebhookDelivery]:
    return WebhookDelivery.objects.filter(webhook=webhook)


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
