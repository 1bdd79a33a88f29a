"""Benchmark suites (worker.benchmarks) on the tiny model: our numbers for base and adapted (one model in memory,
the adapter switched off for the base) equal a direct lm-evaluation-harness run of the same local tasks that
loads the base, and the base with the adapter through the harness's own `peft=` argument; a task of the user's
rows scored by exact match, contains and a grader; the forgetting warning; a cancelled run stops."""

from __future__ import annotations

import math

import pytest

lm_eval = pytest.importorskip("lm_eval")

from worker import benchmarks  # noqa: E402
from worker.benchmarks import UserRow  # noqa: E402

LIMIT = 12


@pytest.fixture(scope="module")
def adapter(tiny_llama, tmp_path_factory):
    from tests.tiny_model import build_random_adapter

    return build_random_adapter(tiny_llama, tmp_path_factory.mktemp("bench-adapter"), seed=5)


@pytest.fixture(scope="module")
def adapted(tiny_llama, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), adapter)
    return model, AutoTokenizer.from_pretrained(tiny_llama)


def direct(model_args: dict, config: dict) -> dict:
    """lm_eval.simple_evaluate run as a user of the harness would: the model loaded by the harness from its path."""
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args={**model_args, "device": "cpu", "batch_size": 8},
        tasks=[config],
        limit=LIMIT,
        bootstrap_iters=benchmarks.BOOTSTRAP_ITERS,
        log_samples=False,
        task_manager=lm_eval.tasks.TaskManager(include_defaults=False),
    )
    return out["results"][config["task"]]


def test_base_and_adapted_match_a_direct_harness_run(adapted, tiny_llama, adapter, tmp_path):
    model, tokenizer = adapted
    # the choice task: its likelihoods give numbers a random model does not zero (generation: the next test)
    choice = next(t for t in benchmarks.general_skills_tasks(tmp_path, count=LIMIT) if t.metric == "acc")
    ours = {r.task: r for r in benchmarks.run_benchmark(model, tokenizer, [choice], limit=LIMIT, batch_size=8)}
    for side, args in (
        ("base", {"pretrained": str(tiny_llama)}),
        ("adapted", {"pretrained": str(tiny_llama), "peft": adapter}),
    ):
        theirs = direct(args, choice.config)
        score = ours[choice.name].scores[side]
        assert score.value == pytest.approx(theirs["acc,none"], abs=1e-12)
        assert score.stderr == pytest.approx(theirs["acc_stderr,none"], abs=1e-12)
        assert (score.low, score.high) == pytest.approx(
            (max(0, score.value - 1.96 * score.stderr), min(1, score.value + 1.96 * score.stderr)), abs=1e-3
        )
    result = ours[choice.name]
    assert result.examples == LIMIT and result.general
    assert result.scores["base"].value != result.scores["adapted"].value  # the adapter was on for one side only


def test_a_task_of_the_users_rows_by_exact_match_contains_and_grader(adapted, tmp_path):
    import torch

    from worker.benchmarks import dataset_task, run_benchmark

    model, tokenizer = adapted
    # What the tiny model answers to these prompts, so each scoring has rows it passes and rows it fails.
    prompts = ["hello world", "the quick brown", "red green blue"]
    answers = []
    with torch.inference_mode(), model.disable_adapter():
        for p in prompts:
            enc = tokenizer(p, return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            answers.append(tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    rows = [
        UserRow(prompts[0], answers[0]),
        UserRow(prompts[1], answers[1][:3] or "x"),
        UserRow(prompts[2], "[1, 2]"),
    ]  # a list-like reference stays text
    graded: list[tuple[str, dict]] = []

    def grade(answer: str, item: dict) -> float:
        graded.append((answer, item))
        return 0.5

    tasks = [
        dataset_task("mine_exact", rows, tmp_path, scoring="exact_match", max_new_tokens=6),
        dataset_task("mine_contains", rows, tmp_path, scoring="contains", max_new_tokens=6),
        dataset_task("mine_graded", rows, tmp_path, scoring="grader", grade=grade, max_new_tokens=6),
    ]
    with model.disable_adapter():  # a plain model (no adapter): the base side alone
        results = {r.task: r for r in run_benchmark(model.get_base_model(), tokenizer, tasks, limit=10)}
    assert set(results["mine_exact"].scores) == {"base"}
    exact, contains = results["mine_exact"].scores["base"].value, results["mine_contains"].scores["base"].value
    assert exact == pytest.approx(1 / 3) and contains == pytest.approx(2 / 3)
    assert results["mine_graded"].scores["base"].value == pytest.approx(0.5)
    assert len(graded) == 3 and graded[0][1]["reference"] == answers[0]
    assert not results["mine_exact"].general


def test_forgetting_warning_past_the_margin_only():
    row = {"task": "general_arithmetic", "metric": "exact_match", "general": True}
    lost = {**row, "base": {"value": 0.60}, "adapted": {"value": 0.40}}
    small = {**row, "task": "general_bigger_number", "base": {"value": 0.60}, "adapted": {"value": 0.57}}
    own = {**row, "task": "mine", "general": False, "base": {"value": 0.9}, "adapted": {"value": 0.1}}
    warnings = benchmarks.forgetting_warnings([lost, small, own], margin_points=5)
    assert len(warnings) == 1 and "20.0 points on general_arithmetic" in warnings[0]
    assert benchmarks.forgetting_warnings([lost], margin_points=25) == []


def test_interval_and_unknown_suite(tmp_path):
    low, high = benchmarks.interval95(0.5, 0.1)
    assert (low, high) == pytest.approx((0.5 - 0.196, 0.5 + 0.196), abs=1e-3)
    assert benchmarks.interval95(0.98, 0.05)[1] == 1.0 and benchmarks.interval95(0.3, None) == (0.3, 0.3)
    assert math.isclose(benchmarks.Z95, 1.96, abs_tol=1e-3)
    with pytest.raises(benchmarks.InputError) as caught:
        benchmarks.suite_tasks(["general-skills", "nope"], tmp_path, 5)
    assert caught.value.field == "suites.1"


def test_a_stop_request_ends_the_run_between_model_calls(adapted, tmp_path):
    model, tokenizer = adapted
    tasks = benchmarks.general_skills_tasks(tmp_path, count=4)
    with pytest.raises(benchmarks.BenchmarkStopped):
        benchmarks.run_benchmark(model, tokenizer, tasks, limit=4, should_stop=lambda: True)


def test_a_standard_task_whose_data_cannot_be_had_is_reported_in_words(adapted, tmp_path, monkeypatch):
    """A harness task that cannot load (here: not in the index at all, as cheap as a download refused offline)
    is reported unavailable and the run goes on with the next task."""
    from lm_eval.tasks import TaskManager

    model, tokenizer = adapted
    monkeypatch.setattr(benchmarks, "task_manager", lambda tasks: TaskManager(include_defaults=False))
    missing = benchmarks.standard_tasks(benchmarks.SUITES["gsm8k"])
    choice = [t for t in benchmarks.general_skills_tasks(tmp_path, count=2) if t.metric == "acc"]
    results = benchmarks.run_benchmark(model, tokenizer, missing + choice, limit=2)
    assert "gsm8k could not load its data" in results[0].unavailable and "offline" in results[0].unavailable
    assert results[0].scores == {} and results[0].as_json()["unavailable"]
    assert set(results[1].scores) == {"base", "adapted"} and not results[1].unavailable


def test_the_rows_a_dataset_gives_a_benchmark():
    from worker.data.examples import Example

    chat = Example(1, messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    pair = Example(2, messages=[{"role": "user", "content": "q"}], chosen=[{"role": "assistant", "content": "good"}],
                   rejected=[{"role": "assistant", "content": "bad"}])  # fmt: skip
    reward = Example(3, messages=[{"role": "user", "content": "2+2?"}], item={"answer": "4", "level": 1})
    text = Example(4, text="just text")
    rows = benchmarks.user_rows([chat, pair, reward, text], lambda msgs: msgs[-1]["content"] + " =>", limit=10)
    assert [(r.prompt, r.reference) for r in rows] == [("hi =>", "hello"), ("q =>", "good"), ("2+2? =>", "4")]
    assert rows[2].item == {"answer": "4", "level": 1}
    assert len(benchmarks.user_rows([chat] * 5, lambda m: "", limit=3)) == 3
