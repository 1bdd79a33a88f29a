"""Reinforcement fine-tuning in the engine on a tiny random model: on a synthetic task (answer with digits) the
validation reward rises well above its start; the adapter saves and reloads; a run stopped in the middle of
sampling stops there; a dataset of the wrong kind is refused in plain words."""

from __future__ import annotations

import json
import time

import pytest

from worker.config import TrainConfig, TrainSpec
from worker.engine import train
from worker.errors import TrainingError
from worker.reporting import MemoryReporter

DIGITS = {
    "type": "python",
    "name": "digits",
    "source": "def grade(sample, item):\n"
    "    text = sample['output_text']\n"
    "    return sum(c.isdigit() for c in text) / max(1, len(text))\n",
}
QUESTIONS = ["what is the answer", "please reply", "hello world", "red green blue", "the quick brown fox", "yes no"]


def _prompts(path, count):
    rows = [{"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], "id": i} for i in range(count)]
    path.write_text("".join(json.dumps({"messages": r["messages"], "item": {"id": r["id"]}}) + "\n" for r in rows))
    return path


def _spec(tiny_llama, tmp_path, **config):
    settings = dict(
        method="reinforcement", batch_size=4, learning_rate=2e-2, warmup_ratio=0.0, target_preset="all_linear",
        rank=8, alpha=16, group_size=8, max_answer_tokens=6, beta=0.0, epochs=1, max_steps=24, eval_every=8,
        keep_best=False, dropout=0.0,
    )  # fmt: skip
    return TrainSpec(
        str(tiny_llama),
        str(_prompts(tmp_path / "train.jsonl", 8)),
        str(tmp_path / "out"),
        TrainConfig(**{**settings, **config}),
        eval_dataset_path=str(_prompts(tmp_path / "eval.jsonl", 4)),
        device="cpu",
        grader=DIGITS,
    )


def test_the_validation_reward_rises_and_the_adapter_reloads(tiny_llama, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    reporter = MemoryReporter()
    result = train(_spec(tiny_llama, tmp_path), reporter)
    assert result.status == "succeeded" and result.steps_done == 24
    points = [metrics for _step, metrics in reporter.points]
    train_rewards = [p["reward"] for p in points]
    assert all({"reward", "reward_spread", "kl", "clipped", "answer_tokens", "cut_short"} <= set(p) for p in points)
    start, end = sum(train_rewards[:4]) / 4, sum(train_rewards[-4:]) / 4
    assert end > start + 0.3, train_rewards
    evaluation = json.loads((tmp_path / "out/evaluation.json").read_text())
    assert evaluation["kind"] == "reward" and evaluation["prompts"] == 4
    assert evaluation["reward"]["adapter"] > evaluation["reward"]["base"] + 0.3, evaluation["reward"]
    first = evaluation["rows"][0]
    assert set(first) == {"item", "prompt", "question", "base", "adapter"} and first["item"] == {"id": 0}
    assert set(first["adapter"]) == {"answer", "reward", "scores", "problems"}
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama), str(tmp_path / "out/adapter")
    )
    assert reloaded is not None
    # Further from that adapter, held to it by the KL: the start model is that adapter, not the base.
    further = tmp_path / "further"
    further.mkdir()
    spec = _spec(tiny_llama, further, max_steps=2, beta=0.5, start_from="0" * 32)
    spec = TrainSpec(**{**spec.__dict__, "start_adapter_dir": str(tmp_path / "out/adapter")})
    reporter = MemoryReporter()
    assert train(spec, reporter).status == "succeeded"
    again = json.loads((further / "out/evaluation.json").read_text())["reward"]
    assert again["base"] == pytest.approx(evaluation["reward"]["adapter"], abs=0.05), again
    assert all(p["kl"] >= 0 for _step, p in reporter.points)


def test_a_stop_during_sampling_stops_within_the_step(tiny_llama, tmp_path):
    asked = {"calls": 0}

    def should_stop():
        asked["calls"] += 1
        return "cancel" if asked["calls"] > 3 else None

    from worker import engine

    original = engine.STOP_POLL_S
    engine.STOP_POLL_S = 0.0
    try:
        result = train(_spec(tiny_llama, tmp_path, max_answer_tokens=64), MemoryReporter(), should_stop)
    finally:
        engine.STOP_POLL_S = original
    assert result.status == "cancelled" and result.steps_done <= 1


def test_a_dataset_of_another_kind_is_refused(tiny_llama, tmp_path, chat_file):
    spec = _spec(tiny_llama, tmp_path)
    spec = TrainSpec(**{**spec.__dict__, "dataset_path": str(chat_file)})
    with pytest.raises(TrainingError, match="reinforcement trains on prompts to reward"):
        train(spec, MemoryReporter())
    supervised = TrainSpec(**{**spec.__dict__, "dataset_path": spec.eval_dataset_path, "config": TrainConfig()})
    with pytest.raises(TrainingError, match="prompts without answers; they are for the reinforcement method"):
        train(supervised, MemoryReporter())


# --- faults: stops, pauses, failing graders and out-of-memory at the worst moments ---------------------------


class StopWhile:
    """Wraps worker.rft's sample_answers: raises the stop flag (as the web's cancel does) at the `at`-th call's
    `after`-th token, and counts the tokens sampled after it."""

    def __init__(self, monkeypatch, request, *, at=1, after=5, greedy=False):
        from worker import rft

        self.request, self.at, self.after, self.greedy = request, at, after, greedy
        self.calls, self.flagged_at, self.tokens_after = 0, None, 0
        original = rft.sample_answers

        def sample_answers(*args, **kw):
            if bool(kw.get("greedy")) != self.greedy:
                return original(*args, **kw)
            self.calls += 1
            if self.calls != self.at:
                return original(*args, **kw)
            inner, count = kw["between_tokens"], [0]

            def between():
                count[0] += 1
                if self.flagged_at is not None:
                    self.tokens_after += 1
                elif count[0] == self.after:
                    self.flagged_at = time.monotonic()
                inner()

            return original(*args, **{**kw, "between_tokens": between})

        monkeypatch.setattr(rft, "sample_answers", sample_answers)

    def should_stop(self):
        return self.request if self.flagged_at is not None else None


def _grader_children() -> list:
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if any("python_child.py" in a for a in p.cmdline())]


def test_a_cancel_while_long_answers_are_sampled_acts_at_the_next_token(tiny_llama, tmp_path, monkeypatch):
    from worker import engine

    # Counted, not timed (a 2-second bound is at the mercy of loaded cores): with the stop flag read at every
    # token, the sampling ends at the token after the cancel. With the real STOP_POLL_S it is one interval later.
    monkeypatch.setattr(engine, "STOP_POLL_S", 0.0)
    stop = StopWhile(monkeypatch, "cancel", at=1, after=5)
    reporter = MemoryReporter()
    spec = _spec(tiny_llama, tmp_path, max_answer_tokens=1500, max_seq_length=1600, max_steps=2)
    result = train(spec, reporter, stop.should_stop)
    assert result.status == "cancelled" and result.steps_done == 0 and reporter.points == []
    assert stop.tokens_after <= 1, f"{stop.tokens_after} tokens were sampled after the cancel (of up to 1500)"
    assert ("cancel", "stopped during step 1; it is redone") in reporter.events
    assert _grader_children() == []


@pytest.mark.parametrize("moment", ["sampling", "validation"])
def test_a_pause_in_the_middle_resumes_from_its_checkpoint_with_every_step_once(
    tiny_llama, tmp_path, monkeypatch, moment
):
    # Steps 1-3 run; the pause comes while step 4 samples (undone, redone after resume) or while the validation
    # after step 4 answers (step 4 is kept and reported without its evaluation).
    from worker import engine

    monkeypatch.setattr(engine, "STOP_POLL_S", 0.0)  # the flag is seen at the next token, however fast they come
    stop = StopWhile(monkeypatch, "pause", at=4 if moment == "sampling" else 1, greedy=moment == "validation")
    first = MemoryReporter()
    spec = _spec(tiny_llama, tmp_path, max_steps=6, eval_every=4, save_every=100, max_answer_tokens=24)
    paused = train(spec, first, stop.should_stop)
    assert stop.tokens_after <= 1  # the flag is read at every token here: the answer ends at the next one
    kept = 3 if moment == "sampling" else 4
    assert paused.status == "paused" and paused.steps_done == kept
    assert [step for step, _ in first.points] == list(range(1, kept + 1))
    assert (tmp_path / f"out/checkpoints/step-{kept:06d}").is_dir()
    second = MemoryReporter()
    resumed = train(spec, second)
    assert resumed.status == "succeeded" and resumed.steps_done == 6
    assert ("resume", f"resumed from checkpoint at step {kept}") in second.events
    assert [step for step, _ in first.points + second.points] == list(range(1, 7))
    assert all("reward" in metrics for _, metrics in first.points + second.points)
    assert "eval_reward" in dict(second.points)[6]


FLAKY = {
    "type": "python",
    "name": "flaky",
    "source": "import time\n"
    "def grade(sample, item):\n"
    "    if item['id'] == 0:\n"
    "        time.sleep(60)\n"
    "    if item['id'] == 1:\n"
    "        raise ValueError('no answer for row 1')\n"
    "    return 1.0\n",
}


def test_a_grader_that_hangs_or_crashes_on_some_answers_scores_them_zero_and_says_so(tiny_llama, tmp_path, monkeypatch):
    from worker import engine, rft

    monkeypatch.setattr(rft, "GRADER_WARN_EVERY", 2)
    seen = []
    original = engine.TrainingRun.train_step

    def train_step(run):
        seen.extend(_grader_children())
        return original(run)

    monkeypatch.setattr(engine.TrainingRun, "train_step", train_step)
    spec = _spec(tiny_llama, tmp_path, max_steps=4, eval_every=100, group_size=2, batch_size=8, final_eval=False)
    spec = TrainSpec(**{**spec.__dict__, "grader": FLAKY, "grader_limits": {"seconds": 0.5}})
    reporter = MemoryReporter()
    result = train(spec, reporter)
    assert result.status == "succeeded" and result.steps_done == 4
    failures = [metrics["grader_failures"] for _, metrics in reporter.points]
    assert failures == [4.0] * 4  # rows 0 and 1 in every step of all 8 prompts, 2 answers each
    assert all(metrics["reward"] == pytest.approx(0.75) for _, metrics in reporter.points)
    warnings = [m for kind, m in reporter.events if kind == "warning" and "the grader failed" in m]
    assert [m.split(" at step ")[1].split(";")[0] for m in warnings] == ["1", "3"], warnings
    assert "they scored 0" in warnings[0] and ("took longer than" in warnings[0] or "row 1" in warnings[0])
    assert seen and _grader_children() == []  # a child graded, and none is left


@pytest.mark.parametrize("grader", ["hangs", "is slow on each of many answers"])
def test_a_cancel_while_a_grader_runs_acts_within_seconds(tiny_llama, tmp_path, grader):
    import threading

    flagged = {}

    def watch():  # the cancel comes as soon as a grader's child runs, whenever the run looks next
        while "at" not in flagged and not flagged.get("done"):
            if _grader_children():
                flagged["at"] = time.monotonic()
            time.sleep(0.02)

    def should_stop():
        return "cancel" if "at" in flagged else None

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    # Hangs: one answer would hold the step for 30 s; slow: 32 answers of 0.3 s each (10 s) add up.
    spec = _spec(tiny_llama, tmp_path, max_steps=2, group_size=2 if grader == "hangs" else 8)
    seconds = 60 if grader == "hangs" else 0.3
    slow = {**FLAKY, "source": f"import time\ndef grade(sample, item):\n    time.sleep({seconds})\n    return 1.0\n"}
    spec = TrainSpec(**{**spec.__dict__, "grader": slow, "grader_limits": {"seconds": 30}})
    try:
        result = train(spec, MemoryReporter(), should_stop)
    finally:
        flagged["done"] = True
        watcher.join()
    assert result.status == "cancelled" and result.steps_done == 0
    # One polling interval (1 s) and the child's end, with room for loaded cores; far under the grading's 10-30 s.
    assert time.monotonic() - flagged["at"] < 4.0
    assert _grader_children() == []


class FlagAtEvent(MemoryReporter):
    def __init__(self, when):
        super().__init__()
        self.when, self.seen = when, False

    def event(self, kind, message):
        super().event(kind, message)
        self.seen = self.seen or message.startswith(self.when)


@pytest.mark.parametrize(("moment", "error"), [("a step", "cuda"), ("the end-of-job evaluation", "host")])
def test_out_of_memory_while_sampling_gives_the_memory_advice(tiny_llama, tmp_path, monkeypatch, moment, error):
    import torch

    from worker import rft
    from worker.memory_advice import ADVICE_OOM, OUT_OF_MEMORY

    reporter = FlagAtEvent("comparing base and adapted" if moment != "a step" else "")
    original = rft.sample_answers

    def sample_answers(*args, **kw):
        if reporter.seen:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory") if error == "cuda" else MemoryError()
        return original(*args, **kw)

    monkeypatch.setattr(rft, "sample_answers", sample_answers)
    with pytest.raises(TrainingError) as caught:
        train(_spec(tiny_llama, tmp_path, max_steps=1, group_size=2), reporter)
    assert caught.value.code == OUT_OF_MEMORY and str(caught.value) == ADVICE_OOM
    assert _grader_children() == []


def test_a_grader_that_scores_every_answer_the_same_is_reported_once(tiny_llama, tmp_path):
    never = {"type": "string_check", "name": "never", "input": "{{sample.output_text}}", "reference": "zzzz",
             "operation": "eq"}  # fmt: skip
    spec = _spec(tiny_llama, tmp_path, max_steps=7, eval_every=100, final_eval=False)
    reporter = MemoryReporter()
    assert train(TrainSpec(**{**spec.__dict__, "grader": never}), reporter).status == "succeeded"
    flat = [message for kind, message in reporter.events if kind == "warning" and "nothing to learn" in message]
    assert flat == [
        "for 5 steps every answer to each prompt scored the same (mean score 0.00), so the model has nothing to learn "
        "from: use a grader that gives partial credit (a multi grader or a text similarity), more answers per prompt, "
        "or start from a supervised job that already gets some answers right"
    ]


def _judged(tiny_llama, tmp_path, max_tokens, **config):
    """A spec whose multi grader has two judges: the base itself (the training model with its adapter off, no second
    copy) and a copy of it in a pool (as an ft: model or another base would be)."""
    import shutil

    copy = shutil.copytree(tiny_llama, tmp_path / "copy")
    ask = [{"role": "developer", "content": "Score 0-1."}, {"role": "user", "content": "{{sample.output_text}}"}]
    grader = {
        "type": "multi", "name": "judged", "calculate_output": "(own + other) / 2",
        "graders": {
            "own": {"type": "score_model", "name": "own", "model": "tiny", "input": ask, "range": [0, 1]},
            "other": {"type": "label_model", "name": "other", "model": "ft:x", "input": ask, "labels": ["yes", "no"],
                      "passing_labels": ["yes"]},
        },
    }  # fmt: skip
    models = {
        "tiny": {"base": str(tiny_llama), "adapter": None, "max_tokens": max_tokens},
        "ft:x": {"base": str(copy), "max_tokens": max_tokens},
    }
    spec = _spec(tiny_llama, tmp_path, group_size=2, max_answer_tokens=4, **config)
    return TrainSpec.from_dict({**spec.to_dict(), "grader": grader, "grader_judges": models})


def test_judge_models_score_in_the_training_process(tiny_llama, tmp_path, monkeypatch):
    from worker import judges

    batches = []
    original = judges.LocalJudge.prefetch
    monkeypatch.setattr(
        judges.LocalJudge, "prefetch", lambda self, r, b=None: (batches.append(len(r)), original(self, r, b))
    )
    reporter = MemoryReporter()
    result = train(_judged(tiny_llama, tmp_path, 4, max_steps=2, eval_every=100), reporter)
    assert result.status == "succeeded" and result.steps_done == 2
    for _step, metrics in reporter.points:  # a random judge's answers: scores parsed or failures counted
        assert 0.0 <= metrics["reward"] <= 1.0 and metrics["grader_failures"] >= 0
    assert batches[:2] == [16, 16]  # a micro-batch's 8 answers x 2 judges, in one prefetch
    rows = json.loads((tmp_path / "out/evaluation.json").read_text())["rows"]
    assert all(row["adapter"]["problems"] or set(row["adapter"]["scores"]) == {"own", "other"} for row in rows)
    problems = [p for row in rows for p in row["base"]["problems"] + row["adapter"]["problems"]]
    assert all("holds no score" in p or "names no label" in p for p in problems), problems  # parsed or said why


@pytest.mark.parametrize("judge", ["tiny", "ft:x"])
def test_a_cancel_while_a_judge_answers_acts_within_seconds(tiny_llama, tmp_path, monkeypatch, judge):
    from worker import judges

    flagged = {}
    original = judges.LocalJudge._judge

    def judging(self, model, conversations, sampling, between):  # the cancel comes at the judge's 3rd token
        tokens = [0]

        def counted():
            tokens[0] += 1
            if tokens[0] == 3 and model == judge:
                flagged["at"] = time.monotonic()
            between()

        return original(self, model, conversations, sampling, counted)

    monkeypatch.setattr(judges.LocalJudge, "_judge", judging)
    spec = _judged(tiny_llama, tmp_path, 4000, max_steps=2, final_eval=False)
    result = train(spec, MemoryReporter(), lambda: "cancel" if "at" in flagged else None)
    assert result.status == "cancelled" and result.steps_done <= 1  # (a judge whose answers all end at once: after it)
    seconds = time.monotonic() - flagged["at"]
    assert seconds < 4.0, f"the cancel took {seconds:.2f} s"  # one polling interval, with room for loaded cores
