"""Scoring one answer with a grader, as OpenAI's `/fine_tuning/alpha/graders/run` does: `grader_run` checks the
grader (`jobs.training.graders.grader_check`), scores `model_sample` against `item` with python graders in their
capped child and model graders judged by the infer worker (`chat_judge`), and answers in OpenAI's shape."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

from django.conf import settings

from jobs.arena.models import ChatAnswer
from jobs.arena.services import chat_check_bounds, chat_completion_create, chat_stop
from jobs.base_models.selectors import base_model_find
from jobs.common import blobs
from jobs.datasets.selectors import dataset_find
from jobs.training.graders import grader_check, grader_limits, grader_parts, grader_slot, job_grader
from jobs.training.selectors import job_find, model_named
from worker.config import GenerationConfig
from worker.data.normalized import first_prompts
from worker.errors import InputError
from worker.graders.scoring import GradeResult, Judge, Scorer
from worker.graders.spec import Grader, PythonGrader, parse_grader

MAX_SAMPLE_CHARS = 100_000
JUDGE_TOKENS = 256  # a judge's answer is a score or a label with a short reason
TRY_MAX_ROWS = 5
TRY_ANSWER_TOKENS = 128  # when the form leaves max_answer_tokens empty
TRY_SECONDS = 120  # a web request waits at most this long (or CHAT_COMPLETION_TIMEOUT when shorter) for answers


def chat_judge(owner, *, timeout: float | None = None, deadline: float | None = None) -> Judge:
    """A judge that asks the infer worker, as the owner, and waits for the whole answer (at most `timeout` s, and
    not past `deadline`, time.monotonic(): after it nothing more is asked)."""
    limit = timeout if timeout is not None else settings.CHAT_COMPLETION_TIMEOUT

    def judge(model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
        if deadline is not None and time.monotonic() >= deadline:
            raise RuntimeError("no time was left to ask the judge")
        found = model_named(owner=owner, name=model)
        if found is None:
            raise RuntimeError(f"there is no model named '{model}' you can use")
        base, job = found
        generation = GenerationConfig(
            max_new_tokens=min(int(sampling.get("max_completions_tokens") or JUDGE_TOKENS), 1024),
            temperature=float(sampling.get("temperature") or 0.0),
            top_p=float(sampling.get("top_p") or 1.0),
            seed=int(sampling.get("seed") or 0),
        )
        chat_check_bounds(owner=owner, generation=generation, new_answers=1, messages=messages)
        answer = chat_completion_create(owner=owner, base=base, job=job, messages=messages, generation=generation)
        answers_wait([answer], min(time.monotonic() + limit, deadline or float("inf")))
        if answer.state == ChatAnswer.State.DONE:
            return answer.text
        if answer.state == ChatAnswer.State.FAILED:
            raise RuntimeError(answer.error or "the judge's answer failed")
        raise RuntimeError(f"the judge did not answer within {limit:g} s")

    return judge


def answers_wait(answers: list[ChatAnswer], deadline: float) -> None:
    """Refresh `answers` until each is done or failed, or until `deadline` (time.monotonic()): one query a look."""
    waiting = {answer.id: answer for answer in answers}
    while waiting:
        rows = ChatAnswer.objects.filter(id__in=waiting).values_list("id", "state", "text", "error")
        for answer_id, state, text, error in rows:
            answer = waiting[answer_id]
            answer.state, answer.text, answer.error = state, text, error
        waiting = {i: a for i, a in waiting.items() if a.state not in (ChatAnswer.State.DONE, ChatAnswer.State.FAILED)}
        if not waiting or time.monotonic() >= deadline:
            return
        time.sleep(0.1)


def python_slot(owner, grader: Grader, seconds: float):
    """A grader slot for `seconds` when the grader has python parts (they start a child), else nothing to hold."""
    if any(isinstance(part, PythonGrader) for _, part in grader_parts(grader)):
        return grader_slot(owner, seconds)
    return nullcontext()


def grader_run(*, owner, grader: object, model_sample: object, item: object = None) -> dict[str, Any]:
    """The reward of `model_sample` for `item`, as OpenAI's GraderRunResponse."""
    parsed = grader_check(owner=owner, grader=grader)
    if not isinstance(model_sample, str):
        raise InputError("model_sample", "must be the model's answer as a string")
    if len(model_sample) > MAX_SAMPLE_CHARS:
        raise InputError("model_sample", f"is longer than {MAX_SAMPLE_CHARS:,} characters")
    item = {} if item is None else item
    limits = grader_limits()
    with Scorer(parsed, judge=chat_judge(owner), limits=limits) as scorer:
        with python_slot(owner, parsed, limits.start_seconds + limits.seconds):
            result = scorer.grade(model_sample, item)
    return run_response(parsed.name, parsed.type, result)


def grader_try(
    *,
    owner,
    dataset_id: str,
    base_model_id: str | None,
    start_from: str | None,
    grader: object,
    rows: int = 3,
    max_answer_tokens: int | None = None,
) -> list[dict[str, Any]]:
    """The grader tried before training: the start model (the base, or `start_from`'s adapter) answers the first
    `rows` prompts of the owner's dataset once each, as training would try them (temperature 1), and each answer
    is scored. [{prompt, answer, reward, scores, problems}] in the dataset's order."""
    if not 1 <= rows <= TRY_MAX_ROWS:
        raise InputError("rows", f"must be from 1 to {TRY_MAX_ROWS}")
    dataset = dataset_find(owner=owner, dataset_id=dataset_id)
    if dataset is None:
        raise InputError("dataset", "you have no such dataset")
    if not dataset.holds_prompts or not dataset.normalized_file:
        raise InputError(
            "dataset", f"{dataset.name} holds {dataset.kind_label.lower()}: graders are tried on prompts to reward"
        )
    base, job = _try_model(owner=owner, base_model_id=base_model_id, start_from=start_from)
    parsed = parse_grader(job_grader(owner=owner, grader=grader))
    prompts = first_prompts(blobs.fetch(dataset.normalized_file), rows)
    generation = GenerationConfig(max_new_tokens=max_answer_tokens or TRY_ANSWER_TOKENS, temperature=1.0)
    for messages, _item in prompts:
        chat_check_bounds(owner=owner, generation=generation, new_answers=len(prompts), messages=messages)
    answers = [
        chat_completion_create(owner=owner, base=base, job=job, messages=messages, generation=generation)
        for messages, _item in prompts
    ]
    limit = min(TRY_SECONDS, settings.CHAT_COMPLETION_TIMEOUT)
    answers_wait(answers, time.monotonic() + limit)
    limits = grader_limits()
    out = []
    # One python child grades every row, under one slot for all of them.
    slot = python_slot(owner, parsed, limits.start_seconds + limits.seconds * len(answers))
    judge = chat_judge(owner, timeout=limit, deadline=time.monotonic() + limit)  # all the rows' judging in `limit`
    with slot, Scorer(parsed, judge=judge, limits=limits) as scorer:
        for answer, (_messages, item) in zip(answers, prompts, strict=True):
            row: dict[str, Any] = {"prompt": answer.prompt, "answer": answer.text, "reward": None, "scores": {}}
            if answer.state != ChatAnswer.State.DONE:
                if answer.state != ChatAnswer.State.FAILED:
                    chat_stop(owner=owner, session=answer.session)
                why = answer.error if answer.state == ChatAnswer.State.FAILED else f"no answer within {limit:g} s"
                out.append({**row, "problems": [f"the model did not answer: {why or 'it failed'}"]})
                continue
            result = scorer.grade(answer.text, item)
            out.append({**row, "reward": result.reward, "scores": result.sub_rewards, "problems": result.problems()})
    return out


def _try_model(*, owner, base_model_id: str | None, start_from: str | None):
    """The model a job would start from: `start_from`'s adapter on its base, else the base model."""
    job = None
    if start_from:
        job = job_find(owner=owner, job_id=start_from)
        if job is None or not job.has_adapter:
            raise InputError("start_from", "must be one of your succeeded jobs with an adapter")
    base = base_model_find(base_model_id, owner=owner) if base_model_id else None
    if base_model_id and base is None:
        raise InputError("base_model", "there is no such base model ready for you")
    if job is not None:
        if base is not None and base.id != job.base_model_id:
            raise InputError(
                "start_from", f"{job.name or job.short_id} is trained on {job.base_model.name}, not on {base.name}"
            )
        return job.base_model, job
    if base is None:
        raise InputError("base_model", "pick the base model that answers")
    return base, None


def run_response(name: str, kind: str, result: GradeResult) -> dict[str, Any]:
    """OpenAI's GraderRunResponse for one graded sample."""
    errors: dict[str, Any] = dict(result.errors)
    errors["python_grader_runtime_error_details"] = (
        "; ".join(result.details.get("python_grader_runtime_error", [])) or None
    )
    errors["python_grader_server_error_type"] = None
    errors["model_grader_server_error_details"] = "; ".join(result.details.get("model_grader_server_error", [])) or None
    return {
        "reward": result.reward,
        "sub_rewards": dict(result.sub_rewards),
        "model_grader_token_usage_per_model": {},
        "metadata": {
            "name": name,
            "type": kind,
            "errors": errors,
            "execution_time": round(result.seconds, 6),
            "scores": dict(result.sub_rewards),
            "token_usage": None,
            "sampled_model_name": None,
            "problems": result.problems(),
        },
    }
