"""Graders in OpenAI's JSON shapes (`openai.types.graders`), checked once and kept as frozen dataclasses.

`parse_grader(obj)` accepts what OpenAI's API accepts (string_check, text_similarity, python, score_model,
label_model, multi) and raises `InputError` whose field is the JSON path of the problem ("grader.graders.fmt.
operation") with a plain message. `grader_json(grader)` gives the object back as OpenAI answers it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from worker.errors import InputError
from worker.graders.formula import Formula, FormulaError, parse_formula
from worker.graders.templates import template_paths
from worker.graders.text_metrics import METRICS

MAX_NAME_CHARS = 64
MAX_TEMPLATE_CHARS = 20_000
MAX_PYTHON_SOURCE_BYTES = 256 * 1024  # as OpenAI's python grader
MAX_SUB_GRADERS = 10
MAX_JUDGE_MESSAGES = 20
STRING_OPERATIONS = ("eq", "ne", "like", "ilike")
TYPES = ("string_check", "text_similarity", "python", "score_model", "label_model", "multi")


@dataclass(frozen=True)
class StringCheck:
    name: str
    input: str
    reference: str
    operation: str
    type: str = "string_check"


@dataclass(frozen=True)
class TextSimilarity:
    name: str
    input: str
    reference: str
    evaluation_metric: str
    type: str = "text_similarity"


@dataclass(frozen=True)
class PythonGrader:
    name: str
    source: str
    image_tag: str | None = None
    type: str = "python"


@dataclass(frozen=True)
class JudgeMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ScoreModel:
    name: str
    model: str
    input: tuple[JudgeMessage, ...]
    range: tuple[float, float] = (0.0, 1.0)
    sampling_params: tuple[tuple[str, Any], ...] = ()
    type: str = "score_model"


@dataclass(frozen=True)
class LabelModel:
    name: str
    model: str
    input: tuple[JudgeMessage, ...]
    labels: tuple[str, ...]
    passing_labels: tuple[str, ...]
    type: str = "label_model"


SingleGrader = StringCheck | TextSimilarity | PythonGrader | ScoreModel | LabelModel


@dataclass(frozen=True)
class MultiGrader:
    name: str
    graders: tuple[tuple[str, SingleGrader], ...]
    calculate_output: Formula
    type: str = "multi"


Grader = SingleGrader | MultiGrader


def parse_grader(obj: Any, path: str = "grader") -> Grader:
    """The grader `obj` describes, or InputError naming the JSON path and what is wrong."""
    fields = _object(obj, path)
    kind = fields.get("type")
    if kind not in TYPES:
        raise InputError(f"{path}.type", f"must be one of {', '.join(TYPES)}; got {kind!r}")
    if kind == "multi":
        return _multi(fields, path)
    return _single(fields, path)


def _single(fields: dict[str, Any], path: str) -> SingleGrader:
    kind = fields["type"]
    name = _name(fields, path)
    if kind == "string_check":
        operation = fields.get("operation")
        if operation not in STRING_OPERATIONS:
            raise InputError(f"{path}.operation", f"must be one of {', '.join(STRING_OPERATIONS)}; got {operation!r}")
        return StringCheck(name, _template(fields, "input", path), _template(fields, "reference", path), operation)
    if kind == "text_similarity":
        metric = fields.get("evaluation_metric")
        if metric == "cosine":
            raise InputError(
                f"{path}.evaluation_metric",
                "cosine needs an embedding model, and none is set up here; use fuzzy_match, bleu, gleu, meteor, "
                "rouge_1 to rouge_5 or rouge_l",
            )
        if metric not in METRICS:
            raise InputError(f"{path}.evaluation_metric", f"must be one of {', '.join(METRICS)}; got {metric!r}")
        return TextSimilarity(name, _template(fields, "input", path), _template(fields, "reference", path), metric)
    if kind == "python":
        source = fields.get("source")
        if not isinstance(source, str) or "def grade" not in source:
            raise InputError(f"{path}.source", "must be Python source that defines grade(sample, item)")
        if len(source.encode("utf-8")) > MAX_PYTHON_SOURCE_BYTES:
            raise InputError(f"{path}.source", f"is longer than the limit of {MAX_PYTHON_SOURCE_BYTES // 1024} KB")
        image_tag = fields.get("image_tag")
        if image_tag is not None and not isinstance(image_tag, str):
            raise InputError(f"{path}.image_tag", "must be a string")
        return PythonGrader(name, source, image_tag)
    model = fields.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InputError(f"{path}.model", "must name a model to judge with")
    messages = _messages(fields.get("input"), f"{path}.input")
    if kind == "score_model":
        return ScoreModel(name, model, messages, _range(fields.get("range"), f"{path}.range"), _sampling(fields, path))
    labels = _strings(fields.get("labels"), f"{path}.labels")
    passing = _strings(fields.get("passing_labels"), f"{path}.passing_labels")
    if not set(passing) <= set(labels):
        raise InputError(f"{path}.passing_labels", "must be some of the labels")
    return LabelModel(name, model, messages, labels, passing)


def _multi(fields: dict[str, Any], path: str) -> MultiGrader:
    name = _name(fields, path)
    graders = fields.get("graders")
    if isinstance(graders, dict) and graders.get("type") in TYPES and isinstance(graders.get("name"), str):
        graders = {graders["name"]: graders}  # one grader object, as the SDK's type has it
    graders = _object(graders, f"{path}.graders")
    if not graders:
        raise InputError(f"{path}.graders", "must hold at least one grader, by name")
    if len(graders) > MAX_SUB_GRADERS:
        raise InputError(f"{path}.graders", f"holds {len(graders)} graders; the limit is {MAX_SUB_GRADERS}")
    parsed: list[tuple[str, SingleGrader]] = []
    for key, value in graders.items():
        where = f"{path}.graders.{key}"
        if not key.isidentifier():
            raise InputError(where, "a grader's key must be a name of letters, digits and _ (the formula uses it)")
        inner = _object(value, where)
        if inner.get("type") == "multi":
            raise InputError(f"{where}.type", "a multi grader cannot hold another multi grader")
        grader = parse_grader(inner, where)
        assert not isinstance(grader, MultiGrader)
        parsed.append((key, grader))
    try:
        formula = parse_formula(fields.get("calculate_output", ""))
    except FormulaError as exc:
        raise InputError(f"{path}.calculate_output", str(exc)) from None
    unknown = sorted(formula.names() - set(graders))
    if unknown:
        raise InputError(
            f"{path}.calculate_output",
            f"uses {', '.join(unknown)}, which no grader is named; named: {', '.join(graders)}",
        )
    return MultiGrader(name, tuple(parsed), formula)


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(path, f"must be a JSON object, got {type(value).__name__}")
    return value


def _name(fields: dict[str, Any], path: str) -> str:
    name = fields.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{path}.name", "must be a non-empty string")
    if len(name) > MAX_NAME_CHARS:
        raise InputError(f"{path}.name", f"is longer than {MAX_NAME_CHARS} characters")
    return name


def _template(fields: dict[str, Any], key: str, path: str) -> str:
    text = fields.get(key)
    if not isinstance(text, str):
        raise InputError(f"{path}.{key}", "must be a string (it may use {{item.field}} and {{sample.output_text}})")
    if len(text) > MAX_TEMPLATE_CHARS:
        raise InputError(f"{path}.{key}", f"is longer than {MAX_TEMPLATE_CHARS:,} characters")
    try:
        template_paths(text)
    except ValueError as exc:
        raise InputError(f"{path}.{key}", str(exc)) from None
    return text


def _messages(value: Any, path: str) -> tuple[JudgeMessage, ...]:
    if not isinstance(value, list) or not value:
        raise InputError(path, "must be a list of messages ({role, content}) for the judge")
    if len(value) > MAX_JUDGE_MESSAGES:
        raise InputError(path, f"holds {len(value)} messages; the limit is {MAX_JUDGE_MESSAGES}")
    messages = []
    for index, message in enumerate(value):
        where = f"{path}.{index}"
        fields = _object(message, where)
        role = fields.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InputError(f"{where}.role", f"must be user, assistant, system or developer; got {role!r}")
        content = fields.get("content")
        if isinstance(content, dict) and content.get("type") in ("input_text", "output_text"):
            content = content.get("text")
        if not isinstance(content, str):
            raise InputError(f"{where}.content", "must be text (images and audio are not supported here)")
        messages.append(JudgeMessage("system" if role == "developer" else role, _template({"c": content}, "c", where)))
    return tuple(messages)


def _range(value: Any, path: str) -> tuple[float, float]:
    if value is None:
        return (0.0, 1.0)
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        or not value[0] < value[1]
    ):
        raise InputError(path, "must be two numbers, the lowest and the highest score, such as [0, 1]")
    return (float(value[0]), float(value[1]))


def _sampling(fields: dict[str, Any], path: str) -> tuple[tuple[str, Any], ...]:
    params = fields.get("sampling_params") or {}
    params = _object(params, f"{path}.sampling_params")
    kept = []
    for key in ("temperature", "top_p", "seed", "max_completions_tokens"):
        if params.get(key) is not None:
            value = params[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{path}.sampling_params.{key}", "must be a number")
            kept.append((key, value))
    return tuple(kept)


def _strings(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise InputError(path, "must be a list of non-empty strings")
    return tuple(value)


def grader_json(grader: Grader) -> dict[str, Any]:
    """The grader as OpenAI's API shows it."""
    if isinstance(grader, MultiGrader):
        return {
            "type": "multi",
            "name": grader.name,
            "graders": {key: grader_json(inner) for key, inner in grader.graders},
            "calculate_output": grader.calculate_output.text,
        }
    if isinstance(grader, (ScoreModel, LabelModel)):
        shown: dict[str, Any] = {
            "type": grader.type,
            "name": grader.name,
            "model": grader.model,
            "input": [{"role": m.role, "content": m.content, "type": "message"} for m in grader.input],
        }
        if isinstance(grader, ScoreModel):
            shown["range"] = list(grader.range)
            shown["sampling_params"] = dict(grader.sampling_params) or None
        else:
            shown["labels"] = list(grader.labels)
            shown["passing_labels"] = list(grader.passing_labels)
        return shown
    if isinstance(grader, PythonGrader):
        return {"type": "python", "name": grader.name, "source": grader.source, "image_tag": grader.image_tag}
    if isinstance(grader, StringCheck):
        return {
            "type": "string_check",
            "name": grader.name,
            "input": grader.input,
            "reference": grader.reference,
            "operation": grader.operation,
        }
    return {
        "type": "text_similarity",
        "name": grader.name,
        "input": grader.input,
        "reference": grader.reference,
        "evaluation_metric": grader.evaluation_metric,
    }
