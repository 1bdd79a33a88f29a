"""Writes for chat and compare: ask (one round to two or three models), vote, stop, and API
completions. Generation itself runs on the infer queue (jobs.arena.tasks)."""

from __future__ import annotations

import random
import uuid

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Prefetch

from jobs.arena.live import chat_stop_request, publish_chat
from jobs.arena.models import ChatAnswer, ChatRound, ChatSession, Vote
from jobs.arena.selectors import answer_event_meta, answer_history
from jobs.base_models.models import BaseModel
from jobs.common import queue
from jobs.common.exceptions import ProductError, StateError
from jobs.datasets.models import Dataset
from jobs.datasets.services import dataset_create_from_examples
from jobs.training.models import FineTuneJob
from jobs.training.selectors import job_find
from jobs.training.services import JobStateError
from worker.config import ConfigError, GenerationConfig
from worker.data.examples import Example
from worker.data.loading import DEFAULT_MAX_CHARS
from worker.errors import InputError

BASE_CONTESTANT = "base"
MAX_CONTESTANTS = 3
VOTE_CHOICES = ("left", "right", "tie", "both_bad")


class ChatBusy(ProductError):
    """The user has too many answers in flight; the shared chat worker serves everyone in turn."""

    status = 429
    field = "answers"


def chat_check_bounds(
    *, owner, generation: GenerationConfig, new_answers: int, messages: list[dict] | None = None, prompt: str = ""
) -> None:
    """Refuse a chat request past the installation's bounds, before anything is stored."""
    if messages is not None and len(messages) > settings.CHAT_MAX_MESSAGES:
        raise InputError(
            "messages",
            f"at most {settings.CHAT_MAX_MESSAGES} messages per request "
            f"(setting CHAT_MAX_MESSAGES), got {len(messages)}",
        )
    chars = sum(len(m["content"]) for m in messages or []) + len(prompt) + len(generation.system_prompt or "")
    if chars > settings.CHAT_MAX_CHARS:
        raise InputError(
            "messages" if messages is not None else "prompt",
            f"at most {settings.CHAT_MAX_CHARS:,} characters per request (setting CHAT_MAX_CHARS), got {chars:,}",
        )
    if generation.max_new_tokens > settings.CHAT_MAX_NEW_TOKENS:
        raise ConfigError(
            "max_new_tokens", f"must be at most {settings.CHAT_MAX_NEW_TOKENS} (setting CHAT_MAX_NEW_TOKENS)"
        )
    in_flight = ChatAnswer.objects.filter(
        session__owner=owner, state__in=(ChatAnswer.State.PENDING, ChatAnswer.State.STREAMING)
    ).count()
    if in_flight + new_answers > settings.CHAT_MAX_PENDING_PER_USER:
        raise ChatBusy(
            f"{in_flight} of your answers are still being generated (at most "
            f"{settings.CHAT_MAX_PENDING_PER_USER} at once, setting CHAT_MAX_PENDING_PER_USER); "
            "wait for them or stop them"
        )


class ChatStateError(StateError):
    """The chat round is not in a state that allows this (already voted, answers unfinished)."""

    def __init__(self, field: str, message: str):
        super().__init__(message, field=field)


def _chat_contestants(*, owner, job: FineTuneJob, keys: list[str] | None) -> list[FineTuneJob | None]:
    """The models named by `keys` ("base" for the base alone, else a job id), all on `job`'s base;
    None stands for the base. Default: the base and `job`."""
    if keys is None:
        return [None, job]
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise InputError("contestants", 'must be a list of model keys: "base" or a job id')
    if not 2 <= len(keys) <= MAX_CONTESTANTS:
        raise InputError("contestants", f"pick 2 or {MAX_CONTESTANTS} models, got {len(keys)}")
    if len(set(keys)) != len(keys):
        raise InputError("contestants", "each model may appear only once")
    models: list[FineTuneJob | None] = []
    for key in keys:
        if key == BASE_CONTESTANT:
            models.append(None)
            continue
        other = job_find(owner=owner, job_id=key)
        if other is None:
            raise InputError("contestants", f'unknown model {key!r}: use "base" or the id of one of your jobs')
        if not other.has_adapter:
            raise InputError("contestants", f"job {other} has no adapter ({other.status}); pick a succeeded job")
        if other.base_model_id != job.base_model_id:
            raise InputError(
                "contestants",
                f"job {other} is trained on {other.base_model.name}, not on "
                f"{job.base_model.name}: side by side models share one base model",
            )
        models.append(other)
    return models


_random = random.SystemRandom()


def _blind_order(models: list) -> list:
    """The screen order of a blind round: a uniformly random permutation, never seen by the client."""
    order = list(models)
    _random.shuffle(order)
    return order


def chat_ask(
    *,
    owner,
    job: FineTuneJob,
    prompt: str,
    generation: GenerationConfig,
    session: ChatSession | None = None,
    contestants: list[str] | None = None,
    blind: bool = False,
) -> tuple[ChatSession, list[ChatAnswer]]:
    """Send one prompt at once to two or three models on the job's base, one ChatRound: "base" (the
    base alone) and/or the owner's succeeded jobs by id; default the base and this job. A blind round
    (two models) shuffles the screen order server-side and carries no history. Answers (in screen
    order) stream via the infer queue."""
    if job.owner_id != owner.id:
        raise JobStateError("not your job")
    if not job.has_adapter:
        raise JobStateError("the job has no adapter yet; compare once it has succeeded")
    models = _chat_contestants(owner=owner, job=job, keys=contestants)
    if blind and len(models) != 2:
        raise InputError("blind", f"a blind round compares exactly two models, got {len(models)}")
    prompt = prompt.strip()
    if not prompt:
        raise InputError("prompt", "type a message first")
    chat_check_bounds(owner=owner, generation=generation, new_answers=len(models), prompt=prompt)
    order = _blind_order(models) if blind else models
    with transaction.atomic():
        if session is None:
            session = ChatSession.objects.create(owner=owner, job=job)
        chat_round = ChatRound.objects.create(session=session, blind=blind)
        answers = [
            ChatAnswer.objects.create(
                session=session,
                round=chat_round,
                job=model,
                position=position,
                side=ChatAnswer.Side.BASE if model is None else ChatAnswer.Side.ADAPTER,
                prompt=prompt,
                settings=generation.__dict__,
            )
            for position, model in enumerate(order)
        ]
        # One task for the round: the infer worker answers every column in one batched generate.
        queue.enqueue(queue.CHAT_ROUND, [str(a.id) for a in answers])
    return session, answers


def _identity_order(answer: ChatAnswer) -> tuple[int, str]:
    """Canonical order of a vote's two models: the base alone first, then adapters by job id."""
    return (0, "") if answer.job_id is None else (1, str(answer.job_id))


def chat_vote(*, owner, chat_round: ChatRound, choice: str) -> Vote:
    """Record the owner's verdict (left, right, tie or both_bad) on a finished two-model round, once.
    Left and right are read through the round's screen order and stored as the models they showed."""
    if chat_round.session.owner_id != owner.id:
        raise ChatStateError("round", "not your chat")
    if choice not in VOTE_CHOICES:
        raise InputError("choice", f"must be one of {', '.join(VOTE_CHOICES)}")
    with transaction.atomic():
        locked = (
            ChatRound.objects.select_for_update()
            .select_related("session__job", "session__base_model")
            .get(id=chat_round.id)
        )
        answers = list(locked.answers.order_by("position"))
        if len(answers) != 2:
            raise InputError("round", f"a vote compares exactly two answers; this round has {len(answers)}")
        if Vote.objects.filter(round=locked).exists():
            raise ChatStateError("round", "this round already has a vote")
        if any(a.state != ChatAnswer.State.DONE for a in answers):
            raise ChatStateError("round", "wait until both answers have finished")
        left, right = answers
        first, second = sorted(answers, key=_identity_order)
        if choice in ("tie", "both_bad"):
            result = choice
        else:
            result = Vote.Result.FIRST if {"left": left, "right": right}[choice] is first else Vote.Result.SECOND
        session = locked.session
        base_model_id = session.job.base_model_id if session.job is not None else session.base_model_id
        assert second.job_id is not None, "the base alone sorts first: the second model is a job's"
        assert base_model_id is not None, "a chat session has a job or a base model"
        try:
            with transaction.atomic():
                return Vote.objects.create(
                    owner=owner,
                    round=locked,
                    first_job_id=first.job_id,
                    second_job_id=second.job_id,
                    base_model_id=base_model_id,
                    result=result,
                    blind=locked.blind,
                )
        except IntegrityError:  # a concurrent vote won the race for this round
            raise ChatStateError("round", "this round already has a vote") from None


def chat_stop(*, owner, session: ChatSession) -> int:
    """The stop button: answers still streaming end at their next token, queued ones never start.

    Returns how many answers were still unfinished. Their text so far is kept.
    """
    if session.owner_id != owner.id:
        raise JobStateError("not your chat")
    chat_stop_request(session.id)
    unfinished = list(session.answers.filter(state__in=(ChatAnswer.State.PENDING, ChatAnswer.State.STREAMING)))
    for answer in unfinished:
        # A queued answer is finished here, empty; its task finds it no longer pending and skips it.
        if ChatAnswer.objects.filter(id=answer.id, state=ChatAnswer.State.PENDING).update(
            state=ChatAnswer.State.DONE, stopped=True
        ):
            publish_chat(session.id, "done", {**answer_event_meta(answer), "text": "", "stopped": True})
    return len(unfinished)


def chat_completion_create(
    *,
    owner,
    base: BaseModel,
    job: FineTuneJob | None,
    messages: list[dict],
    generation: GenerationConfig,
    session_id: uuid.UUID | None = None,
) -> ChatAnswer:
    """Record one API completion (its whole conversation) and hand it to the infer queue on commit."""
    with transaction.atomic():
        session = ChatSession.objects.create(id=session_id or uuid.uuid4(), owner=owner, job=job, base_model=base)
        answer = ChatAnswer.objects.create(
            session=session,
            side=ChatAnswer.Side.ADAPTER if job else ChatAnswer.Side.BASE,
            job=job,
            prompt=messages[-1]["content"],
            messages=messages,
            settings=generation.__dict__,
        )
        queue.enqueue(queue.CHAT_ANSWER, str(answer.id))
    return answer


# --- votes become data ------------------------------------------------------------------------------


class NoUsableVotes(ProductError):
    """None of the owner's votes can become a preference pair (no votes, or only ties and both bad)."""

    status = 422
    field = "votes"


LEFT_OUT_REASONS = {
    "tie": "a tie prefers neither answer",
    "both_bad": "both answers were bad",
    "empty_answer": "an answer was empty (stopped before its first word)",
    "identical_answers": "both answers were the same text",
    "too_long": f"the pair is longer than {DEFAULT_MAX_CHARS:,} characters",
}


def _without_empty_turns(history: list[dict[str, str]]) -> list[dict[str, str]]:
    """The history without earlier exchanges whose answer was empty (a stop before the first word)."""
    kept: list[dict[str, str]] = []
    for message in history:
        if message["role"] == "assistant" and not message["content"].strip():
            if kept and kept[-1]["role"] == "user":
                kept.pop()
            continue
        kept.append(message)
    return kept


def vote_pairs(*, owner, base_model: BaseModel | None = None) -> tuple[list[Example], list[str], dict[str, int]]:
    """The owner's left/right votes as preference pairs, oldest first: (examples, the round id of each,
    how many votes were left out by reason, see LEFT_OUT_REASONS). The prompt is the conversation the
    preferred answer was given (its history, the system prompt, the round's prompt)."""
    answers_of_round = Prefetch("round__answers", queryset=ChatAnswer.objects.select_related("round", "session"))
    votes = Vote.objects.filter(owner=owner).prefetch_related(answers_of_round).order_by("created")
    if base_model is not None:
        votes = votes.filter(base_model=base_model)
    examples: list[Example] = []
    rounds: list[str] = []
    left_out = {reason: 0 for reason in LEFT_OUT_REASONS}
    for vote in votes:
        if vote.result in (Vote.Result.TIE, Vote.Result.BOTH_BAD):
            left_out[vote.result] += 1
            continue
        answers = {a.job_id: a for a in vote.round.answers.all()}
        winner_job = vote.first_job_id if vote.result == Vote.Result.FIRST else vote.second_job_id
        loser_job = vote.second_job_id if vote.result == Vote.Result.FIRST else vote.first_job_id
        chosen, rejected = answers[winner_job], answers[loser_job]
        if not chosen.text.strip() or not rejected.text.strip():
            left_out["empty_answer"] += 1
            continue
        if chosen.text == rejected.text:
            left_out["identical_answers"] += 1
            continue
        prompt = _without_empty_turns(answer_history(chosen))
        system = (chosen.settings or {}).get("system_prompt") or ""
        if system.strip() and prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": system}] + prompt
        example = Example(
            source=len(examples) + 1,
            messages=prompt,
            chosen=[{"role": "assistant", "content": chosen.text}],
            rejected=[{"role": "assistant", "content": rejected.text}],
        )
        if example.chars > DEFAULT_MAX_CHARS:
            left_out["too_long"] += 1
            continue
        examples.append(example)
        rounds.append(str(vote.round_id))
    return examples, rounds, left_out


def votes_summary_text(summary: dict) -> str:
    """ "3 votes became pairs; 2 left out (1 tie, 1 both bad)", for pages and messages."""
    used = summary["used"]
    text = f"{used} vote{'s' if used != 1 else ''} became preference pairs"
    left_out = summary["left_out"]
    if left_out:
        parts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in left_out.items())
        text += f"; {sum(left_out.values())} left out ({parts})"
    return text + "."


def votes_dataset_create(*, owner, name: str = "", base_model: BaseModel | None = None) -> tuple[Dataset, dict]:
    """A preference dataset from the owner's compare votes (only theirs; on one base model if given):
    each left/right vote is a pair, chosen the preferred answer. The dataset's stats keep the rounds it
    came from (`rounds`, in line order) and what was left out. Returns (dataset, {"used", "left_out"});
    NoUsableVotes when no vote makes a pair."""
    name = name.strip()
    if len(name) > 200:
        raise InputError("name", "must be at most 200 characters")
    examples, rounds, left_out = vote_pairs(owner=owner, base_model=base_model)
    counted = {k: v for k, v in left_out.items() if v}
    if not examples:
        why = "; ".join(f"{n} left out because {LEFT_OUT_REASONS[k]}" for k, n in counted.items())
        raise NoUsableVotes(
            "no vote can become a preference pair: vote left or right on a two-model round "
            f"first{f' ({why})' if why else ' (you have no votes yet)'}"
        )
    summary = {"used": len(examples), "left_out": counted}
    default = f"Preferences from {len(examples)} compare vote{'s' if len(examples) != 1 else ''}"
    dataset = dataset_create_from_examples(
        owner=owner,
        examples=examples,
        name=name or default,
        filename="compare-votes.jsonl",
        extra_stats={
            "source": "compare_votes",
            "rounds": rounds,
            "votes_used": len(examples),
            "votes_left_out": counted,
            "base_model": str(base_model.id) if base_model is not None else None,
        },
    )
    return dataset, summary
