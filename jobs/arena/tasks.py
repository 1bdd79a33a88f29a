"""Celery tasks of the infer queue for chat: one answer, or every answer of a comparison round in
one batched generate, streamed piece by piece through Redis. The loaded models live in one pool
per process."""

from __future__ import annotations

import datetime as dt
import logging
from time import monotonic

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from jobs.arena import judgements
from jobs.arena.live import chat_stop_time, publish_chat
from jobs.arena.models import ChatAnswer, Judgement
from jobs.arena.selectors import answer_event_meta, answer_history, session_base_model
from jobs.common import blobs, queue
from jobs.common.shares import JUDGEMENTS, owner_share
from worker.config import GenerationConfig
from worker.errors import StudioError
from worker.inference import ModelPool, fit_conversation
from worker.modeling import cached_tokenizer, context_length

log = logging.getLogger(__name__)
_pool = None


def model_pool():
    """The infer worker's loaded models, kept for the life of the process."""
    global _pool
    if _pool is None:
        _pool = ModelPool(
            memory_budget_mb=settings.INFER_MEMORY_BUDGET_MB,
            device=settings.TRAIN_DEVICE,
            max_adapters_per_base=settings.INFER_MAX_ADAPTERS_PER_BASE,
        )
    return _pool


@shared_task(name=queue.CHAT_ANSWER, acks_late=True)
def chat_answer(answer_id: str) -> str:
    """Generate one answer (an API completion, or one side on its own), streaming through Redis."""
    return _answer_together([answer_id])[0]


@shared_task(name=queue.CHAT_ROUND, acks_late=True)
def chat_round(answer_ids: list[str]) -> list[str]:
    """Generate every answer of a comparison round in one batched call, so all sides stream at once."""
    return _answer_together(answer_ids)


def _storable(text: str) -> str:
    """Generated text without NUL characters, which PostgreSQL text columns refuse (a small or
    badly tuned model can emit them)."""
    return text.replace("\x00", "")


def answer_stats(tokenizer, text: str, *, started: float, first_at: float | None, last_at: float) -> dict:
    """An answer's length in tokens and its latency in milliseconds: to the first piece of text (None when
    it said nothing) and to its last. The length is the answer re-encoded by the base's tokenizer, which the
    pool's generate does not report; it matches the generated tokens but for rare re-merges."""
    tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
    return {
        "tokens": tokens,
        "first_token_ms": None if first_at is None else round(1000 * (first_at - started)),
        "total_ms": round(1000 * (last_at - started)),
    }


def _answer_adapter(answer: ChatAnswer) -> tuple[str, str] | None:
    """(name, folder) of the adapter that gives this answer, None for the base. An adapter side
    without a job of its own is an API completion of the session's job."""
    job = answer.job or (answer.session.job if answer.side == ChatAnswer.Side.ADAPTER else None)
    return None if job is None else (str(job.adapter.id), str(blobs.fetch(job.adapter.folder)))


def _answers_failed(session, claimed, metas, status, answer_ids, stored: str, shown: str) -> list[str]:
    ChatAnswer.objects.filter(id__in=claimed).update(state=ChatAnswer.State.FAILED, error=stored)
    for meta in metas:
        publish_chat(session.id, "error", {**meta, "error": shown})
    status.update({str(i): "failed" for i in claimed})
    return [status[i] for i in answer_ids]


def _answer_together(answer_ids: list[str]) -> list[str]:
    """Claim the pending answers among `answer_ids` (one session, one base), generate them together
    and stream each piece to the session's channel; returns a status per id."""
    claimed = [
        i
        for i in answer_ids
        if ChatAnswer.objects.filter(id=i, state=ChatAnswer.State.PENDING).update(state=ChatAnswer.State.STREAMING)
    ]
    status = {i: "skipped" for i in answer_ids}
    if not claimed:
        return [status[i] for i in answer_ids]
    by_id = {
        str(a.id): a
        for a in ChatAnswer.objects.select_related(
            "session__job__base_model", "session__job__adapter", "session__base_model", "job__adapter", "round"
        ).filter(id__in=claimed)
    }
    answers = [by_id[str(i)] for i in claimed]
    session = answers[0].session
    base_path = session_base_model(session).local_path
    metas = [answer_event_meta(a) for a in answers]
    for meta in metas:
        publish_chat(session.id, "start", meta)
    asked_at = min(a.created for a in answers).timestamp()

    def stop_asked() -> bool:
        stop = chat_stop_time(session.id)
        return stop is not None and stop >= asked_at

    gen = GenerationConfig(**answers[0].settings)
    context = context_length(base_path)
    try:
        fitted = [fit_conversation(cached_tokenizer(base_path), answer_history(a), gen, context) for a in answers]
    except StudioError as exc:  # the model's chat template broke its limits or failed: say so, in its words
        return _answers_failed(session, claimed, metas, status, answer_ids, exc.message, exc.message)
    requests = [(f.messages, _answer_adapter(a)) for f, a in zip(fitted, answers)]
    notes = [f.note(context) for f in fitted]
    # Latency as the worker sees it, from taking up the round (model loading included, queue wait not):
    # when each row's first and last pieces of text came.
    started = monotonic()
    first_at: list[float | None] = [None] * len(answers)
    last_at: list[float | None] = [None] * len(answers)

    def on_text(row: int, piece: str) -> None:
        now = monotonic()
        if first_at[row] is None:
            first_at[row] = now
        last_at[row] = now
        publish_chat(session.id, "token", {**metas[row], "text": _storable(piece)})

    try:
        texts = model_pool().generate_many(base_path, requests, gen, should_stop=stop_asked, on_text=on_text)
    except Exception as exc:
        log.exception("chat answers %s failed", claimed)
        shown = exc.message if isinstance(exc, StudioError) else "generation failed; see the worker log"
        return _answers_failed(session, claimed, metas, status, answer_ids, f"{type(exc).__name__}: {exc}", shown)
    ended = monotonic()
    stopped = stop_asked()
    tokenizer = cached_tokenizer(base_path)
    for row, (answer, meta, text, note) in enumerate(zip(answers, metas, map(_storable, texts), notes)):
        stats = answer_stats(tokenizer, text, started=started, first_at=first_at[row], last_at=last_at[row] or ended)
        ChatAnswer.objects.filter(id=answer.id).update(
            state=ChatAnswer.State.DONE, text=text, stopped=stopped, note=note, stats=stats
        )
        publish_chat(
            session.id, "done", {**meta, "text": text, "stopped": stopped, **stats, **({"note": note} if note else {})}
        )
        status[str(answer.id)] = "stopped" if stopped else "done"
    return [status[i] for i in answer_ids]


@shared_task(name=queue.SWEEP_ANSWERS)
def sweep_answers() -> dict[str, int]:
    """Answers left behind: one streaming for longer than any answer takes (its worker died) fails with
    a message the page shows; one still pending after a while (its message was lost) is sent again."""
    now = timezone.now()
    stuck = ChatAnswer.objects.filter(
        state=ChatAnswer.State.STREAMING, created__lt=now - dt.timedelta(seconds=settings.CHAT_STUCK_SECONDS)
    )
    failed = 0
    for answer in stuck.select_related("round__vote"):
        if ChatAnswer.objects.filter(id=answer.id, state=ChatAnswer.State.STREAMING).update(
            state=ChatAnswer.State.FAILED, error="the chat worker stopped while answering; ask again"
        ):
            publish_chat(
                answer.session_id, "error", {**answer_event_meta(answer), "error": "the chat worker stopped; ask again"}
            )
            failed += 1
    pending = ChatAnswer.objects.filter(
        state=ChatAnswer.State.PENDING, created__lt=now - dt.timedelta(seconds=settings.SWEEP_SECONDS)
    )
    resent = 0
    for answer_id in pending.values_list("id", flat=True):
        queue.send(queue.CHAT_ANSWER, str(answer_id))  # claiming by state makes a duplicate harmless
        resent += 1
    return {"failed": failed, "resent": resent}


@shared_task(name=queue.JUDGEMENT_RUN, acks_late=True, reject_on_worker_lost=True)
def judgement_run(judgement_id: str) -> str:
    """Run a judgement (jobs.arena.judgements) under its claim, its lease kept by a heartbeat; a run that fails
    says why on the row. A message redelivered after its worker died counts an attempt as it claims the row."""
    row = Judgement.objects.select_related("owner").filter(id=judgement_id).first()
    if row is None or row.status not in judgements.PENDING:
        return "skipped"
    share = owner_share(JUDGEMENTS, row.owner_id)
    return judgements.LEASED.work_claimed(
        row, judgements.judgement_work, share=share, what="judgement", failed_as="judgement"
    )


@shared_task(name=queue.SWEEP_JUDGEMENTS, acks_late=True)
def sweep_judgements() -> int:
    """Queue again the judgements whose lease ran out (message lost, or worker died mid-run), counting an attempt
    for a lost message (a run that died counted its own); past MAX_ATTEMPTS one gives up. Returns how many."""
    return judgements.LEASED.requeue_stale(
        judgements.judgements_stale(),
        send=lambda row: queue.send(queue.JUDGEMENT_RUN, str(row.id)),
        give_up=lambda row: judgements.judgement_fail(
            row, f"gave up after {judgements.MAX_ATTEMPTS} attempts (its work was lost each time)"
        ),
    )
