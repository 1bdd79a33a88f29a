"""Evals in OpenAI's shape (`/v1/evals`), as long work on the background worker: `eval_create` checks the testing
criteria with the product's grader validation (jobs.training.graders.grader_check); `eval_run_create` checks a
run's data source (the items given in the request or read from one of the owner's files, a model the owner can
use, the message template) and queues it; the run (`eval_run_work`, from jobs.benchmarks.tasks) asks the model for
each item through the infer worker as a judgement does (jobs.arena.judgements), unless the item brings its
answer, grades it with each criterion (worker.graders.scoring: templates are dotted paths, never code) and stores
each item's output as it goes.

The row is claimed like a judgement: a fresh token and a lease on the database's clock renewed by a heartbeat;
progress and the end are written only while the run holds both, so a cancel or a run that lost its claim writes
nothing more. A rerun after a crash goes on from the items already graded.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.functions import Now

from jobs.arena.graders import answers_wait, chat_judge, python_slot
from jobs.arena.models import ChatAnswer
from jobs.arena.services import ChatBusy, chat_check_bounds, chat_completion_create, chat_stop
from jobs.benchmarks.models import Eval, EvalRun
from jobs.common import blobs, queue
from jobs.common.exceptions import StateError
from jobs.common.leased import LeasedRows
from jobs.training.graders import grader_check, grader_limits
from jobs.training.selectors import model_named
from worker.config import GenerationConfig
from worker.errors import InputError
from worker.graders.scoring import Scorer
from worker.graders.spec import grader_json
from worker.graders.templates import MissingVariable, render_template

MAX_CRITERIA = 10
MAX_ITEMS = 200  # each item is one answer from the shared chat worker, and its grading
MAX_ITEM_CHARS = 20_000
MAX_FILE_BYTES = 5 * 2**20
MAX_TEMPLATE_MESSAGES = 20
MAX_ANSWER_TOKENS = 512
DEFAULT_ANSWER_TOKENS = 128
MAX_NAME_CHARS = 200
MAX_ATTEMPTS = 3
LEASE_SECONDS = 120
BUSY_WAIT_SECONDS = 120
Status = EvalRun.Status
PENDING = (Status.QUEUED, Status.IN_PROGRESS)
LEASED = LeasedRows(EvalRun, lambda: LEASE_SECONDS, max_attempts=MAX_ATTEMPTS, running=Status.IN_PROGRESS)
ROLES = ("system", "developer", "user", "assistant")


# --- evals -----------------------------------------------------------------------------------------------


def _criteria(owner, criteria: object) -> list[dict[str, Any]]:
    """The testing criteria, each checked as a grader (InputError naming `testing_criteria.<i>.<path>`), with
    its pass_threshold kept."""
    if not isinstance(criteria, list) or not criteria:
        raise InputError("testing_criteria", "give at least one grader")
    if len(criteria) > MAX_CRITERIA:
        raise InputError("testing_criteria", f"at most {MAX_CRITERIA} graders, got {len(criteria)}")
    checked, names = [], set()
    for i, criterion in enumerate(criteria):
        path = f"testing_criteria.{i}"
        if not isinstance(criterion, dict):
            raise InputError(path, "must be a grader object")
        fields = dict(criterion)
        threshold = fields.pop("pass_threshold", None)
        if fields.get("type") == "multi":
            raise InputError(f"{path}.type", "a multi grader is not a testing criterion; give its graders one by one")
        try:
            grader = grader_check(owner=owner, grader=fields)
        except InputError as exc:
            raise InputError(path + exc.field.removeprefix("grader"), exc.message) from None
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise InputError(f"{path}.pass_threshold", "must be a number")
        if grader.name in names:
            raise InputError(f"{path}.name", f"another criterion is named '{grader.name}'; names must differ")
        names.add(grader.name)
        shown = grader_json(grader)
        if threshold is not None:
            shown["pass_threshold"] = float(threshold)
        checked.append(shown)
    return checked


def _metadata(metadata: object) -> dict[str, str]:
    """OpenAI's metadata: at most 16 string pairs, keys up to 64 characters, values up to 512."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise InputError("metadata", "must be an object of at most 16 keys")
    for key, value in metadata.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise InputError(f"metadata.{key}", "keys are up to 64 characters, values strings up to 512")
    return dict(metadata)


def _name(name: object, field: str = "name") -> str:
    if name is None:
        return ""
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise InputError(field, f"must be a string of at most {MAX_NAME_CHARS} characters")
    return name.strip()


def eval_create(
    *, owner, data_source_config: object, testing_criteria: object, name: object = None, metadata: object = None
) -> Eval:
    """Check an eval and store it: a custom data source (its item_schema) and graders as testing criteria."""
    if not isinstance(data_source_config, dict):
        raise InputError("data_source_config", "must be an object with a type")
    kind = data_source_config.get("type")
    if kind != "custom":
        raise InputError(
            "data_source_config.type",
            f"only 'custom' is supported here (items you give, with an item_schema); {kind!r} is not: this server "
            "keeps no logs or stored completions to evaluate",
        )
    schema = data_source_config.get("item_schema")
    if not isinstance(schema, dict):
        raise InputError("data_source_config.item_schema", "must be a JSON schema object")
    if len(json.dumps(schema)) > MAX_ITEM_CHARS:
        raise InputError("data_source_config.item_schema", f"at most {MAX_ITEM_CHARS:,} characters")
    include_sample = data_source_config.get("include_sample_schema", False)
    if not isinstance(include_sample, bool):
        raise InputError("data_source_config.include_sample_schema", "must be true or false")
    return Eval.objects.create(
        owner=owner,
        name=_name(name),
        item_schema=schema,
        include_sample_schema=include_sample,
        testing_criteria=_criteria(owner, testing_criteria),
        metadata=_metadata(metadata),
    )


def eval_update(*, evaluation: Eval, name: object = None, metadata: object = None) -> Eval:
    """Rename an eval or replace its metadata (what OpenAI lets change)."""
    if name is not None:
        evaluation.name = _name(name)
    if metadata is not None:
        evaluation.metadata = _metadata(metadata)
    evaluation.save(update_fields=["name", "metadata"])
    return evaluation


def eval_delete(*, evaluation: Eval) -> None:
    """Delete an eval and its runs (a running one stops: its claim is gone with the row)."""
    evaluation.delete()


# --- runs: checks and queueing -------------------------------------------------------------------------------


def _file_items(owner, file_id: object, field: str) -> list[dict[str, Any]]:
    """The rows of one of the owner's files: each line a JSON object, `{"item": {...}, "sample": ...}` or the
    item itself."""
    from jobs.common.ids import parse_public_id
    from jobs.datasets.selectors import dataset_find

    pk = parse_public_id(file_id, "file-")
    dataset = dataset_find(owner=owner, dataset_id=pk) if pk else None
    if dataset is None:
        raise InputError(field, f"you have no file {file_id}")
    path = blobs.fetch(dataset.file)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(field, f"the file is over {MAX_FILE_BYTES // 2**20} MB; an eval run reads smaller files")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise InputError(field, f"line {number} is not JSON") from None
            if not isinstance(row, dict):
                raise InputError(field, f"line {number} is not a JSON object")
            rows.append(row if "item" in row else {"item": row})
    return rows


def _source_items(owner, source: object, field: str, *, with_samples: bool) -> list[dict[str, Any]]:
    if not isinstance(source, dict):
        raise InputError(field, "must be an object: {type: file_content, content: [...]} or {type: file_id, id}")
    kind = source.get("type")
    if kind == "file_content":
        content = source.get("content")
        if not isinstance(content, list):
            raise InputError(f"{field}.content", "must be a list of {item: {...}}")
        rows = content
    elif kind == "file_id":
        rows = _file_items(owner, source.get("id"), f"{field}.id")
    else:
        raise InputError(f"{field}.type", f"must be file_content or file_id; {kind!r} is not supported here")
    if not rows:
        raise InputError(field, "holds no items")
    if len(rows) > MAX_ITEMS:
        raise InputError(field, f"at most {MAX_ITEMS} items a run, got {len(rows)}")
    items = []
    for i, row in enumerate(rows):
        where = f"{field}.content.{i}"
        if not isinstance(row, dict) or not isinstance(row.get("item"), dict):
            raise InputError(f"{where}.item", "must be an object")
        if len(json.dumps(row)) > MAX_ITEM_CHARS:
            raise InputError(where, f"at most {MAX_ITEM_CHARS:,} characters")
        entry: dict[str, Any] = {"item": row["item"]}
        if with_samples:
            sample = row.get("sample")
            if not isinstance(sample, dict) or not isinstance(sample.get("output_text"), str):
                raise InputError(f"{where}.sample.output_text", "a jsonl run grades given answers: give each one")
            entry["sample"] = {"output_text": sample["output_text"]}
        items.append(entry)
    return items


def _template(value: object, field: str) -> list[dict[str, str]]:
    if not isinstance(value, dict) or value.get("type") != "template":
        raise InputError(f"{field}.type", "only a template of messages is supported here")
    template = value.get("template")
    if not isinstance(template, list) or not template:
        raise InputError(f"{field}.template", "give at least one message")
    if len(template) > MAX_TEMPLATE_MESSAGES:
        raise InputError(f"{field}.template", f"at most {MAX_TEMPLATE_MESSAGES} messages")
    messages = []
    for i, message in enumerate(template):
        where = f"{field}.template.{i}"
        if not isinstance(message, dict):
            raise InputError(where, "must be a message {role, content}")
        content = message.get("content")
        if isinstance(content, dict) and content.get("type") in ("input_text", "output_text"):
            content = content.get("text")
        if not isinstance(content, str):
            raise InputError(f"{where}.content", "must be text (images and audio are not supported here)")
        if message.get("role") not in ROLES:
            raise InputError(f"{where}.role", f"must be one of {', '.join(ROLES)}")
        messages.append({"role": message["role"], "content": content})
    return messages


def _sampling(value: object, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(field, "must be an object")
    limit = min(MAX_ANSWER_TOKENS, settings.CHAT_MAX_NEW_TOKENS)
    out: dict[str, Any] = {}
    tokens = value.get("max_completion_tokens")
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= limit:
            raise InputError(f"{field}.max_completion_tokens", f"must be from 1 to {limit}")
        out["max_completion_tokens"] = tokens
    for key, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        number = value.get(key)
        if number is not None:
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not low <= number <= high:
                raise InputError(f"{field}.{key}", f"must be from {low:g} to {high:g}")
            out[key] = float(number)
    seed = value.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"{field}.seed", "must be an integer")
        out["seed"] = seed
    return out


def eval_run_create(*, owner, evaluation: Eval, data_source: object, name: object = None, metadata=None) -> EvalRun:
    """Check a run's data source and queue it: `completions` (a model answers each item from the message
    template) or `jsonl` (the items bring their answers as sample.output_text)."""
    if not isinstance(data_source, dict):
        raise InputError("data_source", "must be an object with a type")
    kind = data_source.get("type")
    model = ""
    shown: dict[str, Any] = {"type": kind}
    if kind == "completions":
        named = data_source.get("model")
        if not isinstance(named, str) or not named.strip():
            raise InputError("data_source.model", "name a model: a base model's name or an ft: id of one of your jobs")
        model = named.strip()
        if model_named(owner=owner, name=model) is None:
            raise InputError("data_source.model", f"there is no model named '{model}' you can use")
        shown["model"] = model
        shown["input_messages"] = {
            "type": "template",
            "template": _template(data_source.get("input_messages"), "data_source.input_messages"),
        }
        shown["sampling_params"] = _sampling(data_source.get("sampling_params"), "data_source.sampling_params")
        items = _source_items(owner, data_source.get("source"), "data_source.source", with_samples=False)
    elif kind == "jsonl":
        items = _source_items(owner, data_source.get("source"), "data_source.source", with_samples=True)
    else:
        raise InputError(
            "data_source.type", f"must be completions or jsonl; {kind!r} is not supported here (no responses API)"
        )
    source = data_source.get("source") or {}
    shown["source"] = {"type": source.get("type")} | ({"id": source["id"]} if source.get("type") == "file_id" else {})
    with transaction.atomic():
        run = EvalRun.objects.create(
            eval=evaluation,
            owner=owner,
            name=_name(name),
            model=model,
            data_source=shown,
            items=items,
            metadata=_metadata(metadata),
            lease_until=LEASED.lease(),
        )
        queue.enqueue(queue.EVAL_RUN, str(run.id), robust=True)  # the sweep sends a lost one again
    run.refresh_from_db()
    return run


def eval_run_cancel(*, run: EvalRun) -> EvalRun:
    """Stop a queued or running run: it writes nothing more; the items graded so far stay."""
    if not EvalRun.objects.filter(id=run.id, status__in=PENDING).update(
        status=Status.CANCELED, claim="", lease_until=None, finished=Now()
    ):
        raise StateError(f"the run is {run.status}; only a queued or running one can be canceled")
    run.refresh_from_db()
    return run


def eval_run_delete(*, run: EvalRun) -> None:
    run.delete()


# --- the run, under its claim ---------------------------------------------------------------------------------


def eval_run_claim(run: EvalRun) -> str | None:
    """Take the run (queued, or in progress on a worker whose lease ran out), counting an attempt; the token or
    None."""
    return LEASED.claim(run.id)


def _held(run: EvalRun, token: str):
    return LEASED.held(run.id, token)


def eval_run_renew(run: EvalRun, token: str, **fields) -> bool:
    """Push the lease on (and write `fields`); False once the claim is gone."""
    return LEASED.renew(run.id, token, **fields)


def eval_run_fail(run: EvalRun, message: str, *, token: str | None = None) -> bool:
    """Give the run up with `message` (fenced by `token` when a run holds it)."""
    return LEASED.end(run.id, message, token=token)


def eval_runs_stale() -> list[EvalRun]:
    """Pending runs whose lease ran out: the message was lost, or the worker died mid-run."""
    return list(LEASED.stale())


def eval_run_requeue(run: EvalRun, attempts: int) -> bool:
    """Queue a stale run again with `attempts` and a fresh lease, unless someone changed it meanwhile."""
    return LEASED.requeue(run, attempts)


def criterion_passed(criterion: dict[str, Any], score: float) -> bool:
    """OpenAI's rule: score >= pass_threshold when one is given; else a string_check passes at 1, a label_model
    when the label is a passing one (score 1), and any other grader at a score of 1 or more."""
    threshold = criterion.get("pass_threshold")
    return score >= (float(threshold) if threshold is not None else 1.0)


def _render(template: list[dict[str, str]], item: dict[str, Any]) -> list[dict[str, str]]:
    """The message template with `{{item.x}}` filled by the product's grader templates (dotted paths only)."""
    namespaces = {"item": item, "sample": {}}
    return [{"role": m["role"], "content": render_template(m["content"], namespaces)} for m in template]


def _answer(owner, base, job, messages, generation: GenerationConfig) -> tuple[str | None, int, str]:
    """The model's answer through the infer worker: (text or None, tokens generated, problem)."""
    deadline = time.monotonic() + BUSY_WAIT_SECONDS
    while True:
        try:
            chat_check_bounds(owner=owner, generation=generation, new_answers=1, messages=messages)
            answer = chat_completion_create(owner=owner, base=base, job=job, messages=messages, generation=generation)
            break
        except ChatBusy:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)
    limit = settings.CHAT_COMPLETION_TIMEOUT
    answers_wait([answer], time.monotonic() + limit)
    tokens = int((answer.stats or {}).get("tokens") or 0)
    if answer.state == ChatAnswer.State.DONE:
        return answer.text, tokens, ""
    if answer.state != ChatAnswer.State.FAILED:
        chat_stop(owner=owner, session=answer.session)
    why = answer.error if answer.state == ChatAnswer.State.FAILED else f"no answer within {limit:g} s"
    return None, tokens, f"the model did not answer: {why or 'it failed'}"


def _grade(scorers: list[tuple[dict, Scorer]], text: str, item: dict[str, Any]) -> list[dict[str, Any]]:
    results = []
    for criterion, scorer in scorers:
        graded = scorer.grade(text, item)
        results.append(
            {
                "name": criterion["name"],
                "type": criterion["type"],
                "score": graded.reward,
                "passed": criterion_passed(criterion, graded.reward) and not graded.failed,
                "sample": None,
                "problems": graded.problems(),
            }
        )
    return results


def eval_run_work(run: EvalRun, token: str) -> str:
    """Answer and grade the items not graded yet, storing each as it ends; "completed", "failed" (the model is
    gone), or "lost" once the claim is gone."""
    owner = run.owner
    found = None
    if run.model:
        found = model_named(owner=owner, name=run.model)
        if found is None:
            return "failed" if eval_run_fail(run, f"the model {run.model} is gone", token=token) else "lost"
    sampling = run.data_source.get("sampling_params") or {}
    generation = GenerationConfig(
        max_new_tokens=int(sampling.get("max_completion_tokens") or DEFAULT_ANSWER_TOKENS),
        temperature=float(sampling.get("temperature") or 0.0),
        top_p=float(sampling.get("top_p") or 1.0),
        seed=int(sampling.get("seed") or 0),
    )
    template = (run.data_source.get("input_messages") or {}).get("template") or []
    outputs = list(run.outputs)
    usage = dict(run.usage) or {"completion_tokens": 0, "invocation_count": 0}
    judge = chat_judge(owner)
    limits = grader_limits()
    criteria = [grader_check(owner=owner, grader=c, load_python=False) for c in run.eval.testing_criteria]
    scorers = [
        (shown, Scorer(grader, judge=judge, limits=limits))
        for shown, grader in zip(run.eval.testing_criteria, criteria, strict=True)
    ]
    with ExitStack() as held:
        for _shown, scorer in scorers:
            held.callback(scorer.close)
        for grader in criteria:  # python graders start children: they count in the owner's grader slots
            held.enter_context(python_slot(owner, grader, limits.start_seconds + limits.seconds * len(run.items)))
        for index in range(len(outputs), len(run.items)):
            if not _held(run, token).exists():
                return "lost"
            row = run.items[index]
            output: dict[str, Any] = {"input": [], "text": None, "tokens": 0, "error": ""}
            if "sample" in row:
                output["text"] = row["sample"]["output_text"]
            else:
                try:
                    output["input"] = _render(template, row["item"])
                except MissingVariable as exc:
                    output["error"] = f"the template names what the item lacks: {exc}"
                if not output["error"]:
                    assert found is not None, "a completions run names its model"
                    text, tokens, problem = _answer(owner, *found, output["input"], generation)
                    output.update(text=text, tokens=tokens, error=problem)
                    usage["completion_tokens"] += tokens
                    usage["invocation_count"] += 1
            output["results"] = _grade(scorers, output["text"], row["item"]) if output["text"] is not None else []
            outputs.append(output)
            if not eval_run_renew(run, token, outputs=outputs, usage=usage):
                return "lost"
    ended = LEASED.finish(run.id, token, Status.COMPLETED)
    return "completed" if ended else "lost"
