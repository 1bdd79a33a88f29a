"""One source of out-of-memory advice: the engine's error (with its code), the retry settings and
the estimator's changes follow the same remedies in the same order."""

import pickle
from unittest import mock

import pytest

from tests.conftest import memorisable_conversations, write_jsonl
from worker.config import TrainConfig, TrainSpec
from worker.engine import train
from worker.errors import TRAINING_ERROR, TrainingError
from worker.memory_advice import ADVICE_OOM, OUT_OF_MEMORY, REMEDIES, fitting_changes, oom_suggestion
from worker.reporting import MemoryReporter


def test_the_oom_message_lists_the_remedies_in_order():
    assert ADVICE_OOM == (
        "Out of memory. Try, in this order: a smaller batch size with more gradient accumulation "
        "(same effective batch), a shorter max sequence length, QLoRA (4-bit base), "
        "gradient checkpointing, or a lower rank."
    )
    assert [r.advice for r in REMEDIES][0].startswith("a smaller batch size")


def test_oom_suggestion_keeps_the_effective_batch():
    assert oom_suggestion(TrainConfig(batch_size=8, grad_accum=2)) == {
        "batch_size": 4,
        "grad_accum": 4,
        "gradient_checkpointing": True,
    }
    assert oom_suggestion(TrainConfig(batch_size=1, max_seq_length=1024, gradient_checkpointing=True)) == {
        "max_seq_length": 512
    }
    assert oom_suggestion(TrainConfig(batch_size=1, max_seq_length=128, gradient_checkpointing=True)) == {"qlora": True}
    odd = oom_suggestion(TrainConfig(batch_size=5, grad_accum=1, gradient_checkpointing=True))
    assert odd == {"batch_size": 2, "grad_accum": 3}, "the effective batch never shrinks"


def test_fitting_changes_follow_the_remedies_order():
    def memory_of(c: TrainConfig) -> float:  # a toy memory model: every remedy helps
        return (
            100
            + c.batch_size * c.max_seq_length / 64
            + (0 if c.qlora else 10)
            + (0 if c.gradient_checkpointing else 10)
        )

    cfg = TrainConfig(batch_size=8, max_seq_length=256)
    tips = fitting_changes(cfg, memory_of, limit=memory_of(cfg) - 5)
    assert [t.split(" ")[0] for t in tips] == ["batch_size", "max_seq_length", "QLoRA", "gradient", "rank"][: len(tips)]
    assert tips[0].startswith("batch_size 4 with grad_accum 2 (same effective batch)")
    hopeless = fitting_changes(cfg, memory_of, limit=50)
    assert len(hopeless) == 1 and "still does not fit" in hopeless[0]


def test_training_error_has_a_code_that_survives_pickling():
    assert TrainingError("x").code == TRAINING_ERROR == "training_error"
    err = pickle.loads(pickle.dumps(TrainingError(ADVICE_OOM, code=OUT_OF_MEMORY)))
    assert (str(err), err.code) == (ADVICE_OOM, OUT_OF_MEMORY)


def test_out_of_memory_in_training_raises_the_advice_with_its_code(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": m} for m in memorisable_conversations()])
    spec = TrainSpec(str(tiny_llama), str(data), str(tmp_path / "out"), TrainConfig(batch_size=4), device="cpu")
    with mock.patch("worker.engine.summed_token_loss", side_effect=MemoryError), pytest.raises(TrainingError) as err:
        train(spec, MemoryReporter())
    assert err.value.code == OUT_OF_MEMORY and str(err.value) == ADVICE_OOM


def test_fsdp_is_advised_first_for_several_devices_and_qlora_never_with_it():
    """A job on several devices that does not fit is told to shard the base (no change to its results); a
    sharded job is never told to add QLoRA (refused with FSDP), neither by the estimate nor the OOM retry."""

    def memory_of(c):  # sharding a quarter, QLoRA a half, checkpointing a tenth off
        return (
            1000
            * (0.25 if c.sharding == "fsdp" else 1)
            * (0.5 if c.qlora else 1)
            * (0.9 if c.gradient_checkpointing else 1)
        )

    whole = TrainConfig(batch_size=8, devices=4)
    tips = fitting_changes(whole, memory_of, 600)
    assert tips[0].startswith("sharding fsdp (the base split across the 4 devices): ~250 MB"), tips
    assert any(t.startswith("QLoRA") for t in tips)
    sharded = TrainConfig(batch_size=8, devices=4, sharding="fsdp", gradient_checkpointing=True)
    tips = fitting_changes(sharded, memory_of, 100)
    assert not any("QLoRA" in t or "sharding" in t for t in tips), tips
    assert "qlora" not in oom_suggestion(
        TrainConfig(batch_size=4, devices=4, max_seq_length=128, sharding="fsdp", gradient_checkpointing=True)
    )
    assert fitting_changes(TrainConfig(), memory_of, 600)[0].startswith("QLoRA"), "one device: nothing to shard"


def test_advice_in_an_error_message_reads_as_separate_alternatives():
    from worker.memory_advice import advice_sentence

    two = advice_sentence(
        [
            "max_seq_length 16 (longer examples are truncated): ~900 MB",
            "batch_size 1 with grad_accum 512 (same effective batch): ~800 MB",
        ]
    )
    assert two == (
        "Try one of these: (1) max_seq_length 16 (longer examples are truncated): ~900 MB; "
        "(2) batch_size 1 with grad_accum 512 (same effective batch): ~800 MB."
    )
    assert advice_sentence(["QLoRA (4-bit base): ~1 MB"]) == "Try: QLoRA (4-bit base): ~1 MB."
    assert advice_sentence([]) == ""
