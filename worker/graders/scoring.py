"""Scoring one sample: `Scorer(grader).grade(output_text, item)` -> `GradeResult`, in the shape of OpenAI's
`/fine_tuning/alpha/graders/run` answer (`reward`, `sub_rewards`, `metadata.errors`).

A grader that cannot score a sample (a missing variable, a python grader that fails, a judge that gives no
number) scores 0 and says why in the result's errors; it never raises. Python graders run in one
`PythonSandbox` per grader kept for the Scorer's life; model graders ask `judge(model, messages, sampling)`.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.graders.formula import FormulaError
from worker.graders.python_sandbox import PythonSandbox, SandboxLimits
from worker.graders.spec import (
    Grader,
    JudgeMessage,
    LabelModel,
    MultiGrader,
    PythonGrader,
    ScoreModel,
    SingleGrader,
    StringCheck,
    TextSimilarity,
)
from worker.graders.templates import MissingVariable, render_template, sample_namespace
from worker.graders.text_metrics import METRICS

# judge(model, [{"role", "content"}], {"temperature": .., "max_completions_tokens": ..}) -> the judge's text
Judge = Callable[[str, list[dict[str, str]], dict[str, Any]], str]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
NAMED_SCORE = re.compile(r"(?i)\b(?:score|result|rating|grade)\b\W{0,3}(-?\d+(?:\.\d+)?)")

ERROR_FLAGS = (
    "formula_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "other_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
)


@dataclass
class GradeResult:
    """A sample's reward, each named grader's part, and what went wrong (OpenAI's error flags)."""

    reward: float
    sub_rewards: dict[str, float] = field(default_factory=dict)
    errors: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(ERROR_FLAGS, False))
    details: dict[str, list[str]] = field(default_factory=dict)  # error flag -> what happened, in plain words
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any(self.errors.values())

    def fail(self, flag: str, detail: str) -> None:
        self.errors[flag] = True
        self.details.setdefault(flag, []).append(detail[:1000])

    def problems(self) -> list[str]:
        """Every failure, in plain words."""
        return [text for texts in self.details.values() for text in texts]


class Scorer:
    """Scores samples with one grader; close() (or `with`) ends its python sandboxes."""

    def __init__(self, grader: Grader, *, judge: Judge | None = None, limits: SandboxLimits | None = None) -> None:
        self.grader = grader
        self.judge = judge
        self.sandboxes: dict[str, PythonSandbox] = {}
        for key, single in _singles(grader):
            if isinstance(single, PythonGrader):
                self.sandboxes[key] = PythonSandbox(single.source, limits)

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for sandbox in self.sandboxes.values():
            sandbox.close()

    def grade(self, output_text: str, item: Any, between: Callable[[], None] | None = None) -> GradeResult:
        """The reward for `output_text` as the answer to the dataset row `item`; `between()` is called while a
        python grader runs (it may raise to stop: the grader's child is ended)."""
        began = time.monotonic()
        result = GradeResult(0.0)
        namespaces = {"item": item, "sample": sample_namespace(output_text)}
        if isinstance(self.grader, MultiGrader):
            for key, single in self.grader.graders:
                result.sub_rewards[key] = self._single(key, single, namespaces, result, between)
            try:
                result.reward = self.grader.calculate_output.compute(result.sub_rewards)
            except FormulaError as exc:
                result.fail("formula_parse_error", f"{self.grader.name}: {exc}")
        else:
            result.reward = self._single(self.grader.name, self.grader, namespaces, result, between)
            result.sub_rewards[self.grader.name] = result.reward
        result.seconds = time.monotonic() - began
        return result

    def _single(
        self,
        key: str,
        grader: SingleGrader,
        namespaces: dict[str, Any],
        result: GradeResult,
        between: Callable[[], None] | None = None,
    ) -> float:
        try:
            if isinstance(grader, StringCheck):
                return _string_check(grader, namespaces)
            if isinstance(grader, TextSimilarity):
                output = render_template(grader.input, namespaces)
                return METRICS[grader.evaluation_metric](output, render_template(grader.reference, namespaces))
            if isinstance(grader, PythonGrader):
                scored = self.sandboxes[key].score(namespaces["sample"], namespaces["item"], between)
                if scored.error is not None:
                    result.fail("python_grader_runtime_error", f"{key}: {scored.error}")
                return scored.score
            return self._judged(key, grader, namespaces, result)
        except MissingVariable as exc:
            result.fail("invalid_variable_error", f"{key}: {exc}")
            return 0.0

    def judge_requests(self, output_text: str, item: Any) -> list[tuple[str, list[dict[str, str]], dict[str, Any]]]:
        """What grading `output_text` will ask the judge: (model, messages, sampling) per model grader, so a caller
        can judge many answers in one batch first (a grader whose template misses a variable asks nothing)."""
        namespaces = {"item": item, "sample": sample_namespace(output_text)}
        requests = []
        for _key, single in _singles(self.grader):
            if isinstance(single, (ScoreModel, LabelModel)):
                try:
                    requests.append(_judge_request(single, namespaces))
                except MissingVariable:
                    continue
        return requests

    def _judged(
        self, key: str, grader: ScoreModel | LabelModel, namespaces: dict[str, Any], result: GradeResult
    ) -> float:
        if self.judge is None:
            result.fail("model_grader_server_error", f"{key}: no judge model is available here")
            return 0.0
        request = _judge_request(grader, namespaces)
        try:
            text = self.judge(*request)
        except Exception as exc:  # noqa: BLE001 - the judge's failure scores 0 and is reported
            result.fail("model_grader_server_error", f"{key}: the judge failed: {exc}")
            return 0.0
        if isinstance(grader, ScoreModel):
            score = judge_score(text)
            if score is None:
                result.fail("model_grader_parse_error", f"{key}: the judge's answer holds no score: {text[:200]!r}")
                return grader.range[0]
            return min(max(score, grader.range[0]), grader.range[1])
        label = judge_label(text, grader.labels)
        if label is None:
            result.fail("model_grader_parse_error", f"{key}: the judge's answer names no label: {text[:200]!r}")
            return 0.0
        return 1.0 if label in grader.passing_labels else 0.0


def _string_check(grader: StringCheck, namespaces: dict[str, Any]) -> float:
    output = render_template(grader.input, namespaces)
    reference = render_template(grader.reference, namespaces)
    if grader.operation == "eq":
        return float(output == reference)
    if grader.operation == "ne":
        return float(output != reference)
    if grader.operation == "like":
        return float(reference in output)
    return float(reference.lower() in output.lower())


def _judge_request(
    grader: ScoreModel | LabelModel, namespaces: dict[str, Any]
) -> tuple[str, list[dict[str, str]], dict[str, Any]]:
    """The judge's model, messages and sampling for one answer (a label is chosen greedily)."""
    sampling = dict(grader.sampling_params) if isinstance(grader, ScoreModel) else {"temperature": 0.0}
    return grader.model, _judge_messages(grader.input, namespaces), sampling


def _judge_messages(messages: Sequence[JudgeMessage], namespaces: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": render_template(m.content, namespaces)} for m in messages]


def judge_score(text: str) -> float | None:
    """A judge's score: `{"result": x}` (OpenAI's structured answer), else the number after the last "score:"
    (or result, rating, grade), else the first number of the last line that holds one."""
    try:
        parsed = json.loads(text.strip())
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("result"), (int, float)):
        value = float(parsed["result"])
        return value if math.isfinite(value) else None
    if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
        return float(parsed)
    named = NAMED_SCORE.findall(text)
    if named:
        return float(named[-1])
    lines = [line for line in text.strip().splitlines() if NUMBER.search(line)]
    return float(NUMBER.findall(lines[-1])[0]) if lines else None  # "3.5 out of 5": the first of the last line


def judge_label(text: str, labels: Sequence[str]) -> str | None:
    """The label a judge chose: `{"result": label}`, the whole answer, or the one label the answer names."""
    try:
        parsed = json.loads(text.strip())
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("result"), str):
        text = parsed["result"]
    cleaned = text.strip().strip(".\"'").lower()
    by_lower = {label.lower(): label for label in labels}
    if cleaned in by_lower:
        return by_lower[cleaned]
    named = [label for label in labels if re.search(rf"\b{re.escape(label.lower())}\b", cleaned)]
    return named[0] if len(named) == 1 else None


def _singles(grader: Grader) -> list[tuple[str, SingleGrader]]:
    return list(grader.graders) if isinstance(grader, MultiGrader) else [(grader.name, grader)]
