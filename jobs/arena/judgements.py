"""A judge model comparing two models, as long work on the background worker: `judgement_create` checks the models
and gathers the prompts (given, the owner's blind votes on the pair, or a job's held-out examples); the run
(`judgement_work`, from jobs.arena.tasks) asks both models through the infer worker as the graders' "Try on a few
rows" does (jobs.arena.graders), unless a voted round already holds the answers the owner saw, then asks the judge
(`chat_judge`) in both orders and stores each prompt's verdicts (jobs.arena.judging) as it goes.

The row is claimed like an export (jobs.training.exports): a fresh token and a lease on the database's clock,
renewed while the run works; progress and the end are written only while the run still holds both, so a cancel
or a run that lost its claim writes nothing more. A rerun after a crash goes on from the prompts already judged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.db import transaction
from django.db.models.functions import Now

from jobs.arena.graders import answers_wait, chat_judge
from jobs.arena.judging import FAILED, combine_orders, judge_messages, parse_verdict
from jobs.arena.models import ChatAnswer, Judgement, Vote
from jobs.arena.selectors import answer_history, vote_pair_filter
from jobs.arena.services import ChatBusy, chat_check_bounds, chat_completion_create, chat_stop
from jobs.common import blobs, queue
from jobs.common.exceptions import StateError
from jobs.common.leased import LeasedRows
from jobs.training.files import job_files
from jobs.training.selectors import job_find, model_named
from worker.config import GenerationConfig
from worker.errors import InputError

MAX_PROMPTS = 50  # a judgement asks 2 answers and 2 verdicts a prompt from the shared chat worker
MAX_PROMPT_CHARS = 4000
MAX_ANSWER_TOKENS = 512
VERDICT_TOKENS = 64  # the judge is asked for one word; a little room for "Verdict: A"
MAX_ATTEMPTS = 3
LEASE_SECONDS = 120
BUSY_WAIT_SECONDS = 120  # how long a run waits for the owner's other chat answers to make room
Status = Judgement.Status
PENDING = (Status.QUEUED, Status.RUNNING)
LEASED = LeasedRows(Judgement, lambda: LEASE_SECONDS, max_attempts=MAX_ATTEMPTS)
T = TypeVar("T")


def _model(*, owner, name: object, field: str):
    if not isinstance(name, str) or not name.strip():
        raise InputError(field, "name a model: a base model's name or an ft: id of one of your jobs")
    found = model_named(owner=owner, name=name.strip())
    if found is None:
        raise InputError(field, f"there is no model named '{name.strip()}' you can use")
    return found


def _given_prompts(prompts: object) -> list[dict[str, Any]]:
    if not isinstance(prompts, list) or not prompts:
        raise InputError("prompts", "give at least one prompt")
    rows = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"prompts.{i}", "must be a prompt's text, not empty")
        rows.append({"messages": [{"role": "user", "content": prompt.strip()}], "round": None})
    return rows


def _vote_prompts(*, owner, a, b) -> list[dict[str, Any]]:
    """The owner's blind votes on models a and b, newest first, as rows that keep the answers the owner saw."""
    if a[0].id != b[0].id:
        raise InputError("model_b", "your votes compare models on one base model; these two are on different bases")
    votes = Vote.objects.filter(vote_pair_filter(a=a, b=b), owner=owner, blind=True).select_related("round")
    rows: list[dict[str, Any]] = []
    for vote in votes.order_by("-created")[:MAX_PROMPTS]:
        answers = {answer.job_id: answer for answer in vote.round.answers.all()}
        answer_a, answer_b = answers.get(a[1].id if a[1] else None), answers.get(b[1].id if b[1] else None)
        if answer_a is None or answer_b is None:
            continue
        rows.append(
            {
                "messages": answer_history(answer_a),
                "round": str(vote.round_id),
                "answer_a": answer_a.text,
                "answer_b": answer_b.text,
            }
        )
    if not rows:
        raise InputError("source", "you have no blind votes on these two models yet: vote in a blind test first")
    return rows


def _held_out_prompts(*, owner, job_id: object, count: int) -> list[dict[str, Any]]:
    """The first `count` prompts of the job's held-out examples (each conversation up to its last user message)."""
    job = job_find(owner=owner, job_id=job_id) if isinstance(job_id, str) and job_id else None
    if job is None:
        raise InputError("job", "name one of your jobs whose held-out examples give the prompts")
    held = blobs.fetch(job_files(job, "data/eval.jsonl"))
    if not held.is_file():
        raise InputError("job", f"{job.name or job.short_id} holds no examples out (its validation is none)")
    rows: list[dict[str, Any]] = []
    with open(held, encoding="utf-8") as lines:
        for line in lines:
            if len(rows) >= count:
                break
            try:
                messages = json.loads(line).get("messages")
            except (ValueError, AttributeError):
                continue
            if not isinstance(messages, list):
                continue
            while messages and messages[-1].get("role") == "assistant":
                messages = messages[:-1]
            if messages and messages[-1].get("role") == "user":
                rows.append({"messages": messages, "round": None})
    if not rows:
        raise InputError("job", "its held-out examples hold no conversation that ends with a user message")
    return rows


def judgement_create(
    *,
    owner,
    model_a: object,
    model_b: object,
    judge: object,
    source: str = Judgement.Source.PROMPTS,
    prompts: object = None,
    job: object = None,
    count: int = 10,
    max_answer_tokens: int = 128,
) -> Judgement:
    """Check a judgement and queue it: models A and B (a base model's name or one of the owner's ft: ids, not the
    same one), the judge (any model the owner can use) and the prompts from `source`: `prompts` given, the owner's
    blind votes on the two models (their answers are judged as the owner saw them), or the first `count` held-out
    examples of `job`. InputError naming the field otherwise."""
    a = _model(owner=owner, name=model_a, field="model_a")
    b = _model(owner=owner, name=model_b, field="model_b")
    _model(owner=owner, name=judge, field="judge")
    if a == b:
        raise InputError("model_b", "must be another model than model_a")
    if not 1 <= count <= MAX_PROMPTS:
        raise InputError("count", f"must be from 1 to {MAX_PROMPTS}")
    if not 1 <= max_answer_tokens <= min(MAX_ANSWER_TOKENS, settings.CHAT_MAX_NEW_TOKENS):
        raise InputError(
            "max_answer_tokens", f"must be from 1 to {min(MAX_ANSWER_TOKENS, settings.CHAT_MAX_NEW_TOKENS)}"
        )
    if source == Judgement.Source.PROMPTS:
        rows = _given_prompts(prompts)
    elif source == Judgement.Source.VOTES:
        rows = _vote_prompts(owner=owner, a=a, b=b)[:count]
    elif source == Judgement.Source.HELD_OUT:
        rows = _held_out_prompts(owner=owner, job_id=job, count=count)
    else:
        raise InputError("source", f"must be one of {', '.join(Judgement.Source.values)}")
    if len(rows) > MAX_PROMPTS:
        raise InputError("prompts", f"at most {MAX_PROMPTS} prompts, got {len(rows)}")
    for i, row in enumerate(rows):
        chars = sum(len(m.get("content") or "") for m in row["messages"])
        if chars > MAX_PROMPT_CHARS:
            raise InputError(f"prompts.{i}", f"at most {MAX_PROMPT_CHARS:,} characters, got {chars:,}")
    with transaction.atomic():
        judgement = Judgement.objects.create(
            owner=owner,
            model_a=str(model_a).strip(),
            model_b=str(model_b).strip(),
            judge=str(judge).strip(),
            source=source,
            max_answer_tokens=max_answer_tokens,
            rows=rows,
            lease_until=LEASED.lease(),
        )
        queue.enqueue(queue.JUDGEMENT_RUN, str(judgement.id), robust=True)  # the sweep sends a lost one again
    judgement.refresh_from_db()
    return judgement


def judgement_cancel(*, owner, judgement: Judgement) -> Judgement:
    """Stop a queued or running judgement: the run writes nothing more; the prompts judged so far stay."""
    if judgement.owner_id != owner.id:
        raise StateError("not your judgement")
    if not Judgement.objects.filter(id=judgement.id, status__in=PENDING).update(
        status=Status.CANCELLED, claim="", lease_until=None, finished=Now()
    ):
        raise StateError(f"the judgement is {judgement.status}; only a queued or running one can be cancelled")
    judgement.refresh_from_db()
    return judgement


# --- the run, under its claim ------------------------------------------------------------------------


def judgement_claim(judgement: Judgement) -> str | None:
    """Take the judgement for this run (queued, or running on a worker whose lease ran out), counting an attempt;
    the claim token, or None when another run holds it or it is over."""
    return LEASED.claim(judgement.id)


def _held(judgement: Judgement, token: str):
    return LEASED.held(judgement.id, token)


def judgement_renew(judgement: Judgement, token: str, **fields) -> bool:
    """Push the run's lease on (and write `fields`); False once its claim is gone (cancelled, or taken over)."""
    return LEASED.renew(judgement.id, token, **fields)


def judgement_fail(judgement: Judgement, message: str, *, token: str | None = None) -> bool:
    """Give the judgement up with `message` (fenced by `token` when a run holds it)."""
    return LEASED.end(judgement.id, message, token=token)


def judgements_stale() -> list[Judgement]:
    """Pending judgements whose lease ran out: the message was lost, or the worker died mid-run."""
    return list(LEASED.stale())


def judgement_requeue(judgement: Judgement, attempts: int) -> bool:
    """Queue a stale judgement again with `attempts` and a fresh lease, unless someone changed it meanwhile."""
    return LEASED.requeue(judgement, attempts)


def _when_free(ask: Callable[[], T]) -> T:
    """`ask()`, waiting while the owner's other chat answers fill their share of the infer worker."""
    deadline = time.monotonic() + BUSY_WAIT_SECONDS
    while True:
        try:
            return ask()
        except ChatBusy:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)


def _answers(owner, row: dict, models: list, generation: GenerationConfig) -> tuple[list[str | None], str]:
    """Both models' answers to the row's prompt through the infer worker: ([text or None], problem)."""
    messages = row["messages"]

    def ask() -> list[ChatAnswer]:
        chat_check_bounds(owner=owner, generation=generation, new_answers=len(models), messages=messages)
        return [
            chat_completion_create(owner=owner, base=base, job=job, messages=messages, generation=generation)
            for base, job in models
        ]

    answers = _when_free(ask)
    limit = settings.CHAT_COMPLETION_TIMEOUT
    answers_wait(answers, time.monotonic() + limit)
    texts: list[str | None] = []
    problems = []
    for name, answer in zip("AB", answers, strict=True):
        if answer.state == ChatAnswer.State.DONE:
            texts.append(answer.text)
            continue
        if answer.state != ChatAnswer.State.FAILED:
            chat_stop(owner=owner, session=answer.session)
        texts.append(None)
        why = answer.error if answer.state == ChatAnswer.State.FAILED else f"no answer within {limit:g} s"
        problems.append(f"model {name} did not answer: {why or 'it failed'}")
    return texts, "; ".join(problems)


def _verdict(judge: Callable, judge_name: str, prompt: str, first: str, second: str) -> dict[str, Any]:
    """One order judged: what the judge said, the word read from it (None when unusable) and why not."""
    sampling = {"max_completions_tokens": VERDICT_TOKENS, "temperature": 0}
    try:
        said = _when_free(lambda: judge(judge_name, judge_messages(prompt, first, second), sampling))
    except (RuntimeError, ChatBusy, InputError) as exc:
        return {"said": "", "verdict": None, "problem": f"the judge failed: {getattr(exc, 'message', str(exc))}"}
    verdict, problem = parse_verdict(said)
    return {"said": said, "verdict": verdict, "problem": problem}


def _judge_row(owner, judgement: Judgement, row: dict, models: list, judge: Callable, gen: GenerationConfig) -> dict:
    row = dict(row)
    if "answer_a" not in row:
        (row["answer_a"], row["answer_b"]), problem = _answers(owner, row, models, gen)
        if problem:
            return {**row, "outcome": FAILED, "flipped": False, "same_position": False, "problem": problem}
    prompt = row["messages"][-1]["content"]
    row["first"] = _verdict(judge, judgement.judge, prompt, row["answer_a"], row["answer_b"])
    row["swapped"] = _verdict(judge, judgement.judge, prompt, row["answer_b"], row["answer_a"])
    verdict = combine_orders(row["first"]["verdict"], row["swapped"]["verdict"])
    orders = (("A first", "first"), ("B first", "swapped"))
    problems = [f"{order}: {row[key]['problem']}" for order, key in orders if row[key]["problem"]]
    return {
        **row,
        "outcome": verdict.outcome,
        "flipped": verdict.flipped,
        "same_position": verdict.same_position,
        "problem": "; ".join(problems),
    }


def judgement_work(judgement: Judgement, token: str) -> str:
    """Judge the prompts not judged yet, storing each as it ends; "done", "failed" (a model is gone), or "lost"
    once the claim is gone."""
    owner = judgement.owner
    models = [model_named(owner=owner, name=name) for name in (judgement.model_a, judgement.model_b)]
    if models[0] is None or models[1] is None:
        gone = judgement.model_a if models[0] is None else judgement.model_b
        return "failed" if judgement_fail(judgement, f"the model {gone} is gone", token=token) else "lost"
    generation = GenerationConfig(max_new_tokens=judgement.max_answer_tokens, temperature=0.0)
    judge = chat_judge(owner)
    rows = list(judgement.rows)
    for i, row in enumerate(rows):
        if "outcome" in row:
            continue
        if not _held(judgement, token).exists():
            return "lost"
        rows[i] = _judge_row(owner, judgement, row, models, judge, generation)
        if not judgement_renew(judgement, token, rows=rows, done=sum("outcome" in r for r in rows)):
            return "lost"
    ended = LEASED.finish(judgement.id, token, Status.DONE)
    return "done" if ended else "lost"
