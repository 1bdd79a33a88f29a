"""Reinforcement fine-tuning in the engine on a tiny random model: on a synthetic task (answer with digits) the
validation reward rises well above its start; the adapter saves and reloads; a run stopped in the middle of
sampling stops there; a dataset of the wrong kind is refused in plain words."""

from __future__ import annotations

import json

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
