"""Scoring one answer with a grader, as OpenAI's `/fine_tuning/alpha/graders/run` does: `grader_run` checks the
grader (`jobs.training.graders.grader_check`), scores `model_sample` against `item` with python graders in their
capped child and model graders judged by the infer worker (`chat_judge`), and answers in OpenAI's shape."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings

from jobs.arena.models import ChatAnswer
from jobs.arena.services import chat_check_bounds, chat_completion_create
from jobs.training.graders import grader_check, grader_limits, grader_parts, grader_slot
from jobs.training.selectors import model_named
from worker.config import GenerationConfig
from worker.errors import InputError
from worker.graders.scoring import GradeResult, Judge, Scorer
from worker.graders.spec import PythonGrader

MAX_SAMPLE_CHARS = 100_000
JUDGE_TOKENS = 256  # a judge's answer is a score or a label with a short reason


def chat_judge(owner, *, timeout: float | None = None) -> Judge:
    """A judge that asks the infer worker, as the owner, and waits for the whole answer (at most `timeout` s)."""
    limit = timeout if timeout is not None else settings.CHAT_COMPLETION_TIMEOUT

    def judge(model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
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
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            answer.refresh_from_db(fields=["state", "text", "error"])
            if answer.state == ChatAnswer.State.DONE:
                return answer.text
            if answer.state == ChatAnswer.State.FAILED:
                raise RuntimeError(answer.error or "the judge's answer failed")
            time.sleep(0.1)
        raise RuntimeError(f"the judge did not answer within {limit:g} s")

    return judge


def grader_run(*, owner, grader: object, model_sample: object, item: object = None) -> dict[str, Any]:
    """The reward of `model_sample` for `item`, as OpenAI's GraderRunResponse."""
    parsed = grader_check(owner=owner, grader=grader)
    if not isinstance(model_sample, str):
        raise InputError("model_sample", "must be the model's answer as a string")
    if len(model_sample) > MAX_SAMPLE_CHARS:
        raise InputError("model_sample", f"is longer than {MAX_SAMPLE_CHARS:,} characters")
    item = {} if item is None else item
    limits = grader_limits()
    has_python = any(isinstance(part, PythonGrader) for _, part in grader_parts(parsed))
    with Scorer(parsed, judge=chat_judge(owner), limits=limits) as scorer:
        if has_python:
            with grader_slot(owner, limits.start_seconds + limits.seconds):
                result = scorer.grade(model_sample, item)
        else:
            result = scorer.grade(model_sample, item)
    return run_response(parsed.name, parsed.type, result)


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
