"""A cancel or pause asked for while the job is not stepping (tokenizing a large dataset, loading the model, the
end-of-job evaluation) takes effect within seconds, not after that work is done."""

import json
import time

import pytest

from tests.factories import memorisable_conversations, write_jsonl
from worker import engine
from worker.config import TrainConfig, TrainSpec
from worker.engine import train
from worker.reporting import MemoryReporter

FAST = dict(batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, target_preset="attention", rank=4, alpha=8)


class FlagAt(MemoryReporter):
    """Raises the stop flag (as the web's cancel does) when an event that starts with `when` is reported."""

    def __init__(self, when: str, request: str):
        super().__init__()
        self.when, self.request, self.flagged_at = when, request, None

    def event(self, kind, message):
        super().event(kind, message)
        if self.flagged_at is None and message.startswith(self.when):
            self.flagged_at = time.monotonic()

    def should_stop(self):
        return self.request if self.flagged_at is not None else None


@pytest.fixture
def big_data(tmp_path):
    rows = [{"messages": m} for m in memorisable_conversations()] * 1000  # 8000 examples to tokenize
    return write_jsonl(tmp_path / "big.jsonl", rows)


@pytest.mark.parametrize("request_", ["cancel", "pause"])
def test_a_stop_during_tokenizing_acts_at_the_next_chunk(tiny_llama, big_data, tmp_path, request_, monkeypatch):
    """The stop flag rises while the third chunk of a large dataset is tokenized; the run stops before the fourth
    (counted, not timed: a 2-second bound failed on loaded cores). With the real polling interval that is within
    STOP_POLL_S of the request."""
    monkeypatch.setattr(engine, "TOKENIZE_CHUNK", 64)
    monkeypatch.setattr(engine, "STOP_POLL_S", 0.0)
    reporter = FlagAt("never said", request_)
    chunks: list[int] = []
    real = engine.tokenize_examples

    def counted(tokenizer, examples, max_len):
        chunks.append(len(examples))
        if len(chunks) == 3:
            reporter.flagged_at = time.monotonic()  # the web's cancel or pause arrives now
        return real(tokenizer, examples, max_len)

    monkeypatch.setattr(engine, "tokenize_examples", counted)
    spec = TrainSpec(str(tiny_llama), str(big_data), str(tmp_path / "out"), TrainConfig(**FAST), device="cpu")
    result = train(spec, reporter, reporter.should_stop)
    assert result.status == ("cancelled" if request_ == "cancel" else "paused") and result.steps_done == 0
    assert chunks == [64, 64, 64], f"{len(chunks)} chunks of 8000 examples tokenized; the stop came after the 3rd"
    assert (request_, "stopped during setup, before step 1") in reporter.events
    assert not any(m.startswith("LoRA on") for _, m in reporter.events), "the model was never built"


def test_a_cancel_during_the_end_of_job_evaluation_stops_it(tiny_llama, chat_file, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "STOP_POLL_S", 0.0)
    reporter = FlagAt("comparing base and adapted model", "cancel")
    spec = TrainSpec(
        str(tiny_llama),
        str(chat_file),
        str(tmp_path / "out"),
        TrainConfig(**FAST, max_steps=2),
        eval_dataset_path=str(chat_file),
        device="cpu",
    )
    result = train(spec, reporter, reporter.should_stop)
    assert result.status == "cancelled" and result.steps_done == 2
    assert ("cancel", "stopped during the end-of-job evaluation; the adapter is saved") in reporter.events
    assert not (tmp_path / "out" / "evaluation.json").exists()
    assert json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())["r"] == 4
