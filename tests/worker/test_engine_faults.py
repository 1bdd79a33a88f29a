"""Faults lose no work: resume falls back past unreadable checkpoints."""
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.factories import memorisable_conversations, write_jsonl
from worker.checkpoint import CheckpointUnreadable, read_checkpoint
from worker.config import TrainConfig, TrainSpec
from worker.engine import train
from worker.reporting import MemoryReporter

FAST = dict(batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, target_preset="all_linear", rank=8, alpha=16,
            epochs=6, dropout=0.1, save_every=2)  # 12 steps, a checkpoint every 2


def spec_for(model_dir, data, out, valid=None, **cfg):
    return TrainSpec(str(model_dir), str(data), str(out), TrainConfig(**{**FAST, **cfg}),
                     eval_dataset_path=str(valid) if valid else None, device="cpu")


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    """A straight run, and the same job paused after step 6 (checkpoints step-4 and step-6 kept)."""
    base = tmp_path_factory.mktemp("runs")
    data = write_jsonl(base / "chat.jsonl", [{"messages": m} for m in memorisable_conversations()])
    straight = MemoryReporter()
    train(spec_for(tiny_llama, data, base / "straight"), straight)
    first = MemoryReporter()
    result = train(spec_for(tiny_llama, data, base / "paused"), first, lambda: "pause" if len(first.points) >= 6 else None)
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


@pytest.mark.parametrize("damage", [
    lambda f: truncate(f / "adapter_model.safetensors"),
    lambda f: (f / "optimizer.safetensors").write_bytes(b""),
    lambda f: (f / "rng.safetensors").unlink(),
    lambda f: (f / "trainer_state.json").write_text('{"step": 6, "optim'),
    lambda f: (f / "trainer_state.json").write_text('{"step": 6}'),
], ids=["truncated", "empty", "missing", "bad-json", "missing-key"])
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
    assert ("warning", "no checkpoint could be read (step-000006, step-000004); starting from step 0") \
        in reporter.events
    assert "resume" not in [k for k, _ in reporter.events]
    expected = runs["straight"].losses()
    assert sorted(reporter.losses()) == list(range(1, 13))
    assert all(abs(loss - expected[step]) < 1e-4 for step, loss in reporter.losses().items())
