"""Benchmark suites: tasks of lm-evaluation-harness (the `lm_eval` package) run on a base model and on the base
with a job's adapter, the adapter loaded once through PEFT and switched off (`disable_adapter()`) for the base's
side, so one copy of the model is in memory.

Every task config is one this module writes, never a user's YAML (lm-eval's YAML can carry `!function` Python):
the user picks built-in suites by name and their own datasets. Three kinds of task:

- the bundled `general-skills` suite: arithmetic questions and a which-is-bigger choice, generated from a seed,
  so a general task is there offline and the forgetting warning always has something to compare;
- standard harness tasks (arithmetic, gsm8k, hellaswag, ARC, an MMLU subject) by their harness names, which need
  the harness's data: where it is not on this machine the task is reported unavailable, in words;
- a task made of the user's own rows (a prompt and its reference answer): greedy answers scored by lm-eval's
  exact_match, by "contains", or by a grader of the reinforcement issue (worker.graders).

The metric, its standard error and aggregation are lm-eval's own; the 95% interval is metric +/- 1.96 stderr.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.errors import InputError

log = logging.getLogger(__name__)

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval
SCORINGS = ("exact_match", "contains", "grader")
DEFAULT_LIMIT = 50  # examples per task, unless asked for fewer
MAX_LIMIT = 500
# lm-eval computes a mean's stderr in closed form; only other aggregations bootstrap (none of ours do)
BOOTSTRAP_ITERS = 1000
MAX_NEW_TOKENS = 256  # the longest answer a task of the user's rows generates
# lm-eval's exact_match, the answer and the reference compared with the whitespace around them trimmed
EXACT_MATCH = {
    "metric": "exact_match",
    "aggregation": "mean",
    "higher_is_better": True,
    "regexes_to_ignore": [r"^\s+", r"\s+$"],
}
GENERAL_SKILLS = "general-skills"


class BenchmarkStopped(Exception):
    """The run was cancelled or ran past its time limit (raised between two model calls)."""


@dataclass(frozen=True)
class Suite:
    """A built-in suite the user can pick: its harness tasks (or the bundled ones), and whether they measure
    general skills (a loss on them past the margin warns of forgetting)."""

    name: str
    label: str
    tasks: tuple[str, ...]
    general: bool = True
    bundled: bool = False


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite(GENERAL_SKILLS, "General skills (bundled: arithmetic, which number is bigger)", (), bundled=True),
        Suite("arithmetic", "Arithmetic (harness: 2- and 3-digit addition and subtraction)", (
            "arithmetic_2da", "arithmetic_2ds", "arithmetic_3da", "arithmetic_3ds")),
        Suite("gsm8k", "Grade-school maths word problems (harness: gsm8k)", ("gsm8k",)),
        Suite("hellaswag", "Common-sense sentence endings (harness: hellaswag)", ("hellaswag",)),
        Suite("arc_easy", "Science questions (harness: ARC easy)", ("arc_easy",)),
        Suite("mmlu_elementary_mathematics", "MMLU elementary mathematics (harness)", (
            "mmlu_elementary_mathematics",)),
    )
}  # fmt: skip


@dataclass(frozen=True)
class BenchmarkTask:
    """One task to run: the lm-eval config (a dict we wrote, or a harness task's name), the metric reported,
    and whether it measures general skills."""

    name: str
    config: dict[str, Any] | str
    metric: str
    general: bool
    suite: str


@dataclass(frozen=True)
class Score:
    value: float
    stderr: float | None
    low: float
    high: float

    def as_json(self) -> dict[str, Any]:
        return {"value": self.value, "stderr": self.stderr, "low": self.low, "high": self.high}


@dataclass
class TaskResult:
    """A task's numbers on each side ("base", "adapted"), or why it could not run."""

    task: str
    suite: str
    metric: str
    general: bool
    examples: int = 0
    scores: dict[str, Score] = field(default_factory=dict)
    unavailable: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "suite": self.suite,
            "metric": self.metric,
            "general": self.general,
            "examples": self.examples,
            "unavailable": self.unavailable or None,
            **{side: score.as_json() for side, score in self.scores.items()},
        }


def interval95(value: float, stderr: float | None) -> tuple[float, float]:
    """The normal 95% interval of a mean, clipped to [0, 1] (every metric here is a rate)."""
    if stderr is None or not math.isfinite(stderr):
        return value, value
    return max(0.0, value - Z95 * stderr), min(1.0, value + Z95 * stderr)


def score_of(task_results: dict[str, Any], metric: str) -> Score:
    """The metric of one task in lm-eval's results (keys "<metric>,<filter>" and "<metric>_stderr,<filter>")."""
    key = next(k for k in task_results if k.split(",")[0] == metric)
    value = float(task_results[key])
    stderr = task_results.get(key.replace(metric, f"{metric}_stderr", 1))
    stderr = float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
    low, high = interval95(value, stderr)
    return Score(value, stderr, low, high)


# --- the bundled general-skills tasks -----------------------------------------------------------------------


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _local_json(path: Path, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The dataset keys of a task reading `rows`, written as one local JSONL file (the `datasets` json builder,
    no network; its cache beside the file, so it goes with the run's scratch folder)."""
    _write_jsonl(path, rows)
    return {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}, "cache_dir": str(path.parent / "cache")},
        "test_split": "test",
    }


def arithmetic_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Two-digit additions and subtractions, the same for a seed: "What is 47 plus 18?" -> "65"."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if rng.random() < 0.5:
            rows.append({"question": f"What is {a} plus {b}?", "answer": str(a + b)})
        else:
            a, b = max(a, b), min(a, b)
            rows.append({"question": f"What is {a} minus {b}?", "answer": str(a - b)})
    return rows


def bigger_rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Which of two numbers is bigger, as a two-way choice scored by likelihood."""
    rng = random.Random(seed + 1)
    rows = []
    for _ in range(count):
        a, b = rng.sample(range(1, 1000), 2)
        rows.append({"question": f"Which number is bigger, {a} or {b}?", "choices": [str(a), str(b)],
                     "label": 0 if a > b else 1})  # fmt: skip
    return rows


def general_skills_tasks(folder: Path, count: int = DEFAULT_LIMIT, seed: int = 0) -> list[BenchmarkTask]:
    """The bundled general-skills tasks, their data written under `folder`."""
    arithmetic = {
        "task": "general_arithmetic",
        **_local_json(folder / "general_arithmetic.jsonl", arithmetic_rows(count, seed)),
        "output_type": "generate_until",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": " {{answer}}",
        "generation_kwargs": {"until": ["\n", "Question:"], "max_gen_toks": 8, "do_sample": False},
        "metric_list": [EXACT_MATCH],
    }
    bigger = {
        "task": "general_bigger_number",
        **_local_json(folder / "general_bigger_number.jsonl", bigger_rows(count, seed)),
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    return [
        BenchmarkTask("general_arithmetic", arithmetic, "exact_match", True, GENERAL_SKILLS),
        BenchmarkTask("general_bigger_number", bigger, "acc", True, GENERAL_SKILLS),
    ]


# --- a task of the user's own rows -------------------------------------------------------------------------


@dataclass(frozen=True)
class UserRow:
    """One row of the user's dataset: the prompt as the model sees it (chat template applied), the reference
    answer, and the row's other fields (what a grader reads as {{item.<field>}})."""

    prompt: str
    reference: str
    item: dict[str, Any] = field(default_factory=dict)


def _prompt_of(doc: dict[str, Any]) -> str:
    return str(doc["prompt"])


def _reference_of(doc: dict[str, Any]) -> str:
    return str(doc["reference"])


def _contains(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    answer = results[0] if results else ""
    reference = doc["reference"].strip()
    return {"contains": float(bool(reference) and reference.lower() in answer.lower())}


def _grader_results(grade: Callable[[str, dict[str, Any]], float]) -> Callable[..., dict[str, float]]:
    def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
        item = {**json.loads(doc["item"]), "reference": doc["reference"]}
        return {"grader": float(grade(results[0] if results else "", item))}

    return process_results


def dataset_task(
    name: str,
    rows: Sequence[UserRow],
    folder: Path,
    *,
    scoring: str = "exact_match",
    grade: Callable[[str, dict[str, Any]], float] | None = None,
    max_new_tokens: int | None = None,
) -> BenchmarkTask:
    """A generate-until task of the user's rows, scored by lm-eval's exact_match (whitespace trimmed), by
    whether the answer contains the reference (case-insensitive), or by `grade(answer, item)` (0 to 1).
    Answers stop at `max_new_tokens`: by default room for the longest reference and some more."""
    if scoring not in SCORINGS:
        raise InputError("scoring", f"must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    if scoring == "grader" and grade is None:
        raise InputError("scoring", "grader scoring needs a grader")
    if not rows:
        raise InputError("dataset", "has no rows with a prompt and an answer to compare with")
    if max_new_tokens is None:  # a token is rarely under 2 characters; an answer may ramble a little first
        max_new_tokens = min(MAX_NEW_TOKENS, 16 + max(len(r.reference) for r in rows) // 2)
    data = [{"prompt": r.prompt, "reference": r.reference, "item": json.dumps(r.item)} for r in rows]
    config: dict[str, Any] = {
        "task": name,
        **_local_json(folder / f"{name}.jsonl", data),
        "output_type": "generate_until",
        # functions, not templates: a reference that reads like a list stays the text it is
        "doc_to_text": _prompt_of,
        "doc_to_target": _reference_of,
        "generation_kwargs": {"until": [], "max_gen_toks": max_new_tokens, "do_sample": False},
    }
    if scoring == "exact_match":
        config["metric_list"] = [EXACT_MATCH]
    else:
        config["process_results"] = _contains if scoring == "contains" else _grader_results(grade)  # type: ignore[arg-type]
        config["metric_list"] = [{"metric": scoring, "aggregation": "mean", "higher_is_better": True}]
    return BenchmarkTask(name, config, scoring, False, "dataset")


def user_rows(examples: Sequence[Any], render: Callable[[list[dict[str, str]]], str], limit: int) -> list[UserRow]:
    """The rows of a dataset's examples (worker.data.examples.Example) a benchmark can score: each
    conversation up to its last assistant turn (rendered by `render`) and that turn as the reference; a
    preference pair's prompt and its preferred answer; a reinforcement row's prompt with its item. Plain texts
    have no answer to compare with and are left out."""
    rows: list[UserRow] = []
    for ex in examples:
        msgs = ex.messages or []
        if ex.item is not None and msgs:
            rows.append(UserRow(render(msgs), str(ex.item.get("reference", ex.item.get("answer", ""))), ex.item))
        elif ex.chosen and msgs:  # a preference pair: the preferred answer is the reference
            rows.append(UserRow(render(msgs), ex.chosen[-1]["content"]))
        else:
            last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
            if last is not None and last > 0:
                rows.append(UserRow(render(msgs[:last]), msgs[last]["content"]))
        if len(rows) >= limit:
            break
    return rows


def file_rows(path: str | Path, tokenizer: Any, limit: int) -> list[UserRow]:
    """The benchmark rows of a normalised dataset file (worker.data.normalized), prompts rendered with the
    model's chat template; at most `limit`."""
    from worker.chat_template import render_chat
    from worker.data.normalized import read_normalized_jsonl

    return user_rows(
        read_normalized_jsonl(path), lambda msgs: render_chat(tokenizer, msgs, add_generation_prompt=True), limit
    )


# --- standard harness tasks ----------------------------------------------------------------------------------


def standard_tasks(suite: Suite) -> list[BenchmarkTask]:
    """A standard suite's harness tasks by name, with the metric the harness reports for them: exact_match for
    gsm8k's answers, acc elsewhere (arithmetic counts an answer right when it is the greedy continuation)."""
    metric = "exact_match" if suite.name == "gsm8k" else "acc"
    return [BenchmarkTask(name, name, metric, suite.general, suite.name) for name in suite.tasks]


def suite_tasks(names: Sequence[str], folder: Path, limit: int, seed: int = 0) -> list[BenchmarkTask]:
    """The tasks of the named built-in suites; InputError naming `suites.<i>` for an unknown one."""
    tasks: list[BenchmarkTask] = []
    for i, name in enumerate(names):
        suite = SUITES.get(name)
        if suite is None:
            raise InputError(f"suites.{i}", f"unknown suite {name!r}; the suites are {', '.join(SUITES)}")
        tasks += general_skills_tasks(folder, limit, seed) if suite.bundled else standard_tasks(suite)
    return tasks


def load_benchmark_model(base_path: str, adapter_dir: str | None) -> tuple[Any, Any]:
    """The base (unquantized, at its own dtype, on the GPU when there is one) with the adapter through PEFT when
    given, and the tokenizer: one copy, the adapter switched off for the base's side."""
    from peft import PeftModel

    from worker.modeling import DeviceChoice, choose_device, load_base_model, load_tokenizer, original_dtype

    device = DeviceChoice(choose_device("auto").device, original_dtype(base_path))
    model = load_base_model(base_path, device)
    model.config.use_cache = True  # generation: load_base_model turns the cache off for training
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    return model, load_tokenizer(base_path)


# --- running -------------------------------------------------------------------------------------------------


def harness_lm(
    model: Any, tokenizer: Any, *, batch_size: int = 8, should_stop: Callable[[], bool] | None = None
) -> Any:
    """An lm-eval model over an already-loaded Hugging Face model (a PeftModel included); `should_stop()` is
    asked before every forward pass and generate call, and BenchmarkStopped raised when it says so."""
    from lm_eval.models.huggingface import HFLM

    class StoppableHFLM(HFLM):  # type: ignore[misc]
        def _model_call(self, *args: Any, **kwargs: Any) -> Any:
            if should_stop is not None and should_stop():
                raise BenchmarkStopped()
            return super()._model_call(*args, **kwargs)

        def _model_generate(self, *args: Any, **kwargs: Any) -> Any:
            if should_stop is not None and should_stop():
                raise BenchmarkStopped()
            return super()._model_generate(*args, **kwargs)

    return StoppableHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def task_manager(tasks: Sequence[BenchmarkTask]) -> Any:
    """lm-eval's task index: the harness's own tasks only when a standard task is asked for (indexing them
    reads hundreds of YAML files)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=any(isinstance(t.config, str) for t in tasks), verbosity="ERROR")


def harness_evaluate(lm: Any, config: dict[str, Any] | str, *, limit: int | None, manager: Any) -> dict[str, Any]:
    """One task through the harness's `evaluate`, set up as `lm_eval.simple_evaluate` sets it up (no few-shot
    examples unless the task has its own, the harness's few-shot seed), without simple_evaluate's report of
    the environment (it runs git and torch's collect_env: seconds a call) nor its reseeding of the process's
    global random generators; its results row (metrics, stderrs) and how many examples ran."""
    from lm_eval.defaults import DEFAULT_OTHER_SEED
    from lm_eval.evaluator import evaluate

    loaded = manager.load([config])
    for task in loaded["tasks"].values():
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
    out = evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False)
    assert out is not None, "evaluate returns None only on ranks other than 0"
    name = config["task"] if isinstance(config, dict) else config
    return {"results": out["results"][name], "examples": int(out["n-samples"][name]["effective"])}


def unavailable_reason(task: BenchmarkTask, exc: Exception) -> str:
    """Why a standard task cannot run, in words (its data is not on this machine and the server is offline)."""
    return (
        f"{task.name} could not load its data: it is not on this server and the server cannot download it "
        f"(offline). An administrator can place the harness's data set in the Hugging Face cache. "
        f"({type(exc).__name__})"
    )


def run_benchmark(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[BenchmarkTask],
    *,
    limit: int = DEFAULT_LIMIT,
    batch_size: int = 8,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> list[TaskResult]:
    """Each task on the base (the adapter disabled) and, when `model` carries a PEFT adapter, on the adapted
    model. A standard task whose data cannot be had is reported unavailable; BenchmarkStopped when
    `should_stop()` says so (between model calls)."""
    adapted = hasattr(model, "disable_adapter") and bool(getattr(model, "peft_config", None))
    model.eval()
    lm = harness_lm(model, tokenizer, batch_size=batch_size, should_stop=should_stop)
    manager = task_manager(tasks)
    results: list[TaskResult] = []
    sides = ("base", "adapted") if adapted else ("base",)
    for i, task in enumerate(tasks):
        result = TaskResult(task.name, task.suite, task.metric, task.general)
        for j, side in enumerate(sides):
            if progress is not None:
                progress(f"{task.name}: {side}", (i + j / len(sides)) / len(tasks))
            try:
                if side == "base" and adapted:
                    with model.disable_adapter():
                        out = harness_evaluate(lm, task.config, limit=limit, manager=manager)
                else:
                    out = harness_evaluate(lm, task.config, limit=limit, manager=manager)
            except BenchmarkStopped:
                raise
            except Exception as exc:
                if isinstance(task.config, dict):
                    raise  # our own task: a failure is a bug or a broken row, not a missing download
                log.info("benchmark task %s unavailable", task.name, exc_info=True)
                result.unavailable = unavailable_reason(task, exc)
                break
            result.examples = out["examples"]
            result.scores[side] = score_of(out["results"], task.metric)
        results.append(result)
    if progress is not None:
        progress("done", 1.0)
    return results


# --- what the numbers say ------------------------------------------------------------------------------------


def forgetting_warnings(results: Sequence[dict[str, Any]], margin_points: float) -> list[str]:
    """A sentence for each general task on which the adapted model scores more than `margin_points` (percentage
    points) below its base: it learned the user's task and lost some of what the base could do."""
    warnings = []
    for r in results:
        base, adapted = r.get("base"), r.get("adapted")
        if not r.get("general") or not base or not adapted:
            continue
        lost = (base["value"] - adapted["value"]) * 100
        if lost > margin_points:
            warnings.append(
                f"The adapter lost {lost:.1f} points on {r['task']} ({base['value'] * 100:.1f}% -> "
                f"{adapted['value'] * 100:.1f}% {r['metric']}), more than the {margin_points:g}-point margin: it may "
                f"have learned your format and forgotten some general skill. Try fewer epochs, a lower learning "
                f"rate or rank, or mix general examples into your data."
            )
    return warnings
