"""Faults lose no work: resume falls back past unreadable checkpoints, and a lost claim stops all writes."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import worker.engine as engine
import worker.resume as resume
from tests.factories import memorisable_conversations, write_jsonl
from worker.checkpoint import CheckpointUnreadable, read_checkpoint
from worker.config import TrainConfig, TrainSpec
from worker.engine import train
from worker.reporting import MemoryReporter, WorkLost

FAST = dict(
    batch_size=4,
    learning_rate=1e-2,
    warmup_ratio=0.0,
    target_preset="all_linear",
    rank=8,
    alpha=16,
    epochs=6,
    dropout=0.1,
    save_every=2,
)  # 12 steps, a checkpoint every 2


def spec_for(model_dir, data, out, valid=None, **cfg):
    return TrainSpec(
        str(model_dir),
        str(data),
        str(out),
        TrainConfig(**{**FAST, **cfg}),
        eval_dataset_path=str(valid) if valid else None,
        device="cpu",
    )


def listing(folder: Path) -> dict[str, tuple]:
    """Every entry under folder with its size and mtime: any write shows up as a difference."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    """A straight run, and the same job paused after step 6 (checkpoints step-4 and step-6 kept)."""
    base = tmp_path_factory.mktemp("runs")
    data = write_jsonl(base / "chat.jsonl", [{"messages": m} for m in memorisable_conversations()])
    straight = MemoryReporter()
    train(spec_for(tiny_llama, data, base / "straight"), straight)
    first = MemoryReporter()
    result = train(
        spec_for(tiny_llama, data, base / "paused"), first, lambda: "pause" if len(first.points) >= 6 else None
    )
    assert result.status == "paused" and result.steps_done == 6
    assert sorted(p.name for p in (base / "paused/checkpoints").iterdir()) == ["step-000004", "step-000006"]
    return {"data": data, "straight": straight, "straight_out": base / "straight", "paused": base / "paused"}


def paused_copy(runs, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(runs["paused"], out)
    return out


def truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: truncate(f / "adapter_model.safetensors"),
        lambda f: (f / "optimizer.safetensors").write_bytes(b""),
        lambda f: (f / "rng.safetensors").unlink(),
        lambda f: (f / "trainer_state.json").write_text('{"step": 6, "optim'),
        lambda f: (f / "trainer_state.json").write_text('{"step": 6}'),
    ],
    ids=["truncated", "empty", "missing", "bad-json", "missing-key"],
)
def test_a_damaged_checkpoint_is_unreadable(runs, tmp_path, damage):
    folder = paused_copy(runs, tmp_path) / "checkpoints/step-000006"
    assert read_checkpoint(folder).step == 6
    damage(folder)
    with pytest.raises(CheckpointUnreadable, match="checkpoint step-000006 is unreadable"):
        read_checkpoint(folder)


def test_resume_falls_back_to_the_checkpoint_before_a_truncated_one(tiny_llama, runs, tmp_path):
    out = paused_copy(runs, tmp_path)
    truncate(out / "checkpoints/step-000006/adapter_model.safetensors")
    reporter = MemoryReporter()
    result = train(spec_for(tiny_llama, runs["data"], out), reporter)

    assert result.status == "succeeded" and result.steps_done == 12
    warnings = [m for k, m in reporter.events if k == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith("checkpoint step-000006 is unreadable (SafetensorError")
    assert ("resume", "resumed from checkpoint at step 4 (step-000006 unreadable)") in reporter.events
    assert [s for s, _ in reporter.points] == list(range(5, 13))
    expected = runs["straight"].losses()
    for step, loss in reporter.losses().items():
        assert abs(loss - expected[step]) < 1e-4, (step, loss, expected[step])
    a = load_file(str(runs["straight_out"] / "adapter/adapter_model.safetensors"))
    b = load_file(str(out / "adapter/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert read_checkpoint(out / "checkpoints/step-000010").step == 10


def test_resume_starts_over_when_no_checkpoint_reads(tiny_llama, runs, tmp_path):
    out = paused_copy(runs, tmp_path)
    truncate(out / "checkpoints/step-000006/adapter_model.safetensors")
    (out / "checkpoints/step-000004/trainer_state.json").write_text("not json")
    reporter = MemoryReporter()
    result = train(spec_for(tiny_llama, runs["data"], out), reporter)

    assert result.status == "succeeded" and result.steps_done == 12
    assert (
        "warning",
        "no checkpoint could be read (step-000006, step-000004); starting from step 0",
    ) in reporter.events
    assert "resume" not in [k for k, _ in reporter.events]
    expected = runs["straight"].losses()
    assert sorted(reporter.losses()) == list(range(1, 13))
    assert all(abs(loss - expected[step]) < 1e-4 for step, loss in reporter.losses().items())


class FencedReporter(MemoryReporter):
    """Loses the job at a chosen moment, and records the output folder as it was then."""

    def __init__(self, out: Path, *, guard_call=0, log_step=0, event_kind="", stop_call=0):
        super().__init__()
        self.out, self.guard_call, self.log_step, self.event_kind = out, guard_call, log_step, event_kind
        self.stop_call, self.guards, self.stops, self.at_loss = stop_call, 0, 0, None

    def lose(self):
        self.at_loss = listing(self.out)
        raise WorkLost("another worker owns this job now")

    def guard(self):
        self.guards += 1
        if self.guards == self.guard_call:
            self.lose()

    def log(self, step, metrics):
        super().log(step, metrics)
        if step == self.log_step:
            self.lose()

    def event(self, kind, message):
        super().event(kind, message)
        if kind == self.event_kind:
            self.lose()

    def should_stop(self):
        self.stops += 1
        if self.stops == self.stop_call:
            self.lose()
        return None


@pytest.mark.parametrize(
    "when",
    [
        dict(guard_call=2),
        dict(guard_call=4),
        dict(guard_call=7),
        dict(log_step=4),
        dict(stop_call=7),
        dict(event_kind="best"),
        dict(event_kind="saved"),
    ],
    ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()),
)
def test_work_lost_propagates_and_nothing_is_written_after(tiny_llama, runs, tmp_path, when):
    valid = write_jsonl(tmp_path / "valid.jsonl", [{"messages": m} for m in memorisable_conversations(3)])
    out = tmp_path / "out"
    reporter = FencedReporter(out, **when)
    # eval_every=1 and a threshold only the first evaluation can meet: step 1's adapter is kept ("best" event).
    spec = spec_for(tiny_llama, runs["data"], out, valid, eval_every=1, early_stopping_threshold=50.0)
    with pytest.raises(WorkLost, match="another worker"):
        train(spec, reporter, reporter.should_stop)
    assert reporter.at_loss is not None
    assert listing(out) == reporter.at_loss
    if "log_step" in when:
        assert (out / "checkpoints/step-000002").is_dir() and not (out / "checkpoints/step-000004").exists()
    if when.get("event_kind") == "saved":
        assert (out / "adapter").is_dir() and not (out / "evaluation.json").exists()


def test_the_guard_comes_right_before_every_write(tiny_llama, runs, tmp_path, monkeypatch):
    trail = []

    def traced(name):
        for module in (engine, resume):  # the recipe's writes, and its resume and checkpoint phases'
            if not hasattr(module, name):
                continue
            real = getattr(module, name)

            def write(*args, _real=real, **kwargs):
                trail.append(name)
                return _real(*args, **kwargs)

            monkeypatch.setattr(module, name, write)

    for name in (
        "save_checkpoint",
        "save_adapter",
        "prune_checkpoints",
        "recover_leftovers",
        "discard_checkpoint",
        "write_text_atomic",
    ):
        traced(name)

    class Tracing(MemoryReporter):
        def guard(self):
            trail.append("guard")

        def log(self, step, metrics):
            trail.append("log")
            super().log(step, metrics)

        def event(self, kind, message):
            trail.append("event")
            super().event(kind, message)

    valid = write_jsonl(tmp_path / "valid.jsonl", [{"messages": m} for m in memorisable_conversations(3)])
    out = paused_copy(runs, tmp_path)
    truncate(out / "checkpoints/step-000006/adapter_model.safetensors")  # a discard, too
    reporter = Tracing()
    result = train(
        spec_for(tiny_llama, runs["data"], out, valid, eval_every=3, init_lora_weights="pissa", learning_rate=3e-3),
        reporter,
    )
    assert result.status == "succeeded"
    writes = [i for i, entry in enumerate(trail) if entry not in ("guard", "log", "event")]
    assert {trail[i] for i in writes} == {
        "save_checkpoint",
        "save_adapter",
        "prune_checkpoints",
        "recover_leftovers",
        "discard_checkpoint",
        "write_text_atomic",
    }
    for i in writes:
        before = [entry for entry in trail[:i] if entry in ("guard", "log", "event")]
        assert before[-1] == "guard", (trail[i], trail[max(0, i - 4) : i + 1])
    assert json.loads((out / "evaluation.json").read_text())["examples"] == 3


def test_a_pause_still_saves_a_checkpoint_behind_the_guard(tiny_llama, runs, tmp_path):
    out = tmp_path / "out"
    reporter = FencedReporter(out)
    result = train(
        spec_for(tiny_llama, runs["data"], out, save_every=50),
        reporter,
        lambda: "pause" if len(reporter.points) >= 3 else None,
    )
    assert result.status == "paused" and result.steps_done == 3
    assert read_checkpoint(out / "checkpoints/step-000003").step == 3
    assert reporter.guards == 2, "one when setting up, one for the pause checkpoint"
