"""Warm starts: a base kept loaded between jobs comes back exactly as loaded, and a second job on it trains as a cold one."""

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from worker.config import TrainConfig, TrainSpec
from worker.engine import train
from worker.modeling import choose_device
from worker.reporting import MemoryReporter
from worker.warm import WarmBases

FAST = dict(batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, target_preset="all_linear", rank=8, alpha=16, epochs=2)
WARM = "base model already loaded (warm start)"


def spec_for(model_dir, data, out, **cfg):
    return TrainSpec(str(model_dir), str(data), str(out), TrainConfig(**{**FAST, **cfg}), device="cpu")


def setup_events(reporter):
    return [m for kind, m in reporter.events if kind == "setup" and "base model" in m]


def kept_model(warm):
    (entry,) = warm._kept.values()
    return entry.model


def assert_pristine(model, model_dir):
    """Every weight and buffer bit-identical to a fresh load, and no LoRA layer or hook left."""
    fresh = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    got = model.state_dict()
    assert got.keys() == fresh.keys()
    for name, tensor in fresh.items():
        assert torch.equal(got[name], tensor), name
    assert not any("lora" in name.lower() for name, _ in model.named_modules())
    assert not hasattr(model, "peft_config") and not model.is_activation_checkpointing
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_second_job_starts_warm_from_the_true_base_and_trains_as_a_cold_one(tiny_llama, chat_file, tmp_path):
    warm = WarmBases(budget_mb=512)
    first = MemoryReporter()
    train(spec_for(tiny_llama, chat_file, tmp_path / "a", gradient_checkpointing=True, use_dora=True), first, warm=warm)
    assert setup_events(first) == ["loading base model"]
    assert_pristine(kept_model(warm), tiny_llama)

    second, cold = MemoryReporter(), MemoryReporter()
    result = train(spec_for(tiny_llama, chat_file, tmp_path / "b"), second, warm=warm)
    train(spec_for(tiny_llama, chat_file, tmp_path / "c"), cold)
    assert setup_events(second) == [WARM] and setup_events(cold) == ["loading base model"]
    assert result.status == "succeeded" and result.model is None
    assert second.losses() == cold.losses()  # same seed, same base: the same run, bit for bit
    assert warm.stats()["loads"] == 1 and warm.stats()["hits"] == 1
    assert_pristine(kept_model(warm), tiny_llama)


class Boom(RuntimeError):
    pass


class FailingReporter(MemoryReporter):
    def log(self, step, metrics):
        super().log(step, metrics)
        if step == 2:
            raise Boom("reporter down")


@pytest.mark.parametrize("ending", ["cancel", "pause", "fail"])
def test_base_comes_back_pristine_when_a_job_stops_midway(ending, tiny_llama, chat_file, tmp_path):
    warm = WarmBases(budget_mb=512)
    out = tmp_path / ending
    if ending == "fail":
        with pytest.raises(Boom):
            train(spec_for(tiny_llama, chat_file, out, dropout=0.1), FailingReporter(), warm=warm)
    else:
        reporter = MemoryReporter()
        result = train(
            spec_for(tiny_llama, chat_file, out, save_every=1),
            reporter,
            lambda: ending if len(reporter.points) >= 2 else None,
            warm=warm,
        )
        assert result.status == ("cancelled" if ending == "cancel" else "paused")
    assert_pristine(kept_model(warm), tiny_llama)
    again = MemoryReporter()
    train(spec_for(tiny_llama, chat_file, tmp_path / "next"), again, warm=warm)
    assert setup_events(again) == [WARM]


def test_qlora_base_is_kept_apart_and_comes_back_unchanged(tiny_llama, chat_file, tmp_path):
    warm = WarmBases(budget_mb=512)
    train(spec_for(tiny_llama, chat_file, tmp_path / "q1", qlora=True), MemoryReporter(), warm=warm)
    (entry,) = warm._kept.values()
    before = {k: v.clone() for k, v in entry.model.state_dict().items()}
    plain = MemoryReporter()
    train(spec_for(tiny_llama, chat_file, tmp_path / "p"), plain, warm=warm)
    assert setup_events(plain) == ["loading base model"]  # a 16-bit job never gets the 4-bit base
    again, cold = MemoryReporter(), MemoryReporter()
    train(spec_for(tiny_llama, chat_file, tmp_path / "q2", qlora=True), again, warm=warm)
    train(spec_for(tiny_llama, chat_file, tmp_path / "q3", qlora=True), cold)
    assert setup_events(again) == [WARM]
    assert again.losses() == cold.losses()
    quantized = next(e for e in warm._kept.values() if e.key[4] is not None).model.state_dict()
    assert all(torch.equal(quantized[k], v) for k, v in before.items())


def test_a_changed_model_folder_is_loaded_again(tiny_llama, chat_file, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama, model_dir)
    warm = WarmBases(budget_mb=512)
    train(spec_for(model_dir, chat_file, tmp_path / "a"), MemoryReporter(), warm=warm)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(2)
    model.save_pretrained(model_dir)
    reporter = MemoryReporter()
    train(spec_for(model_dir, chat_file, tmp_path / "b"), reporter, warm=warm)
    assert setup_events(reporter) == ["loading base model"]
    assert_pristine(kept_model(warm), model_dir)  # the new weights replaced the stale base (budget: one)


@pytest.mark.parametrize("changes", [dict(init_lora_weights="pissa"), dict(modules_to_save=("lm_head",))])
def test_a_base_the_job_rewrote_is_not_kept(changes, tiny_llama, chat_file, tmp_path):
    """PiSSA rewrites the base's weights; modules_to_save leaves lm_head on other storage: never served again."""
    warm = WarmBases(budget_mb=512)
    train(spec_for(tiny_llama, chat_file, tmp_path / "p", epochs=1, **changes), MemoryReporter(), warm=warm)
    assert warm.stats()["kept"] == 0 and warm.stats()["dropped"] == 1
    reporter = MemoryReporter()
    train(spec_for(tiny_llama, chat_file, tmp_path / "next", epochs=1), reporter, warm=warm)
    assert setup_events(reporter) == ["loading base model"]


def test_budget_keeps_the_most_recent_bases(tiny_llama, tiny_gpt2, chat_file, tmp_path):
    device = choose_device("cpu")
    none = WarmBases(budget_mb=0)
    model, warm_start = none.acquire(str(tiny_llama), device)
    assert not warm_start and none.release(model) is False

    llama, _ = WarmBases(budget_mb=512).acquire(str(tiny_llama), device)
    one_mb = llama.num_parameters() * 4 / 2**20
    warm = WarmBases(budget_mb=one_mb * 1.5)  # room for one tiny model, not two
    for path in (tiny_llama, tiny_gpt2, tiny_gpt2):
        model, _ = warm.acquire(str(path), device)
        assert warm.release(model)
    assert [e.key[0] for e in warm._kept.values()] == [str(tiny_gpt2.resolve())]
    assert warm.stats()["loads"] == 2 and warm.stats()["hits"] == 1
    with pytest.raises(ValueError):
        WarmBases(budget_mb=-1)


def test_a_16_bit_qlora_base_is_kept_too(tiny_llama, chat_file, tmp_path, monkeypatch):
    """A QLoRA base computing in bf16 keeps its norms in bf16 (no upcast by PEFT's preparation during the job,
    which would change the base): the same base comes back and trains the same."""
    warm = WarmBases(budget_mb=512)
    cfg = dict(qlora=True, epochs=1, precision="bf16")
    train(spec_for(tiny_llama, chat_file, tmp_path / "q1", **cfg), MemoryReporter(), warm=warm)
    again, cold = MemoryReporter(), MemoryReporter()
    train(spec_for(tiny_llama, chat_file, tmp_path / "q2", **cfg), again, warm=warm)
    train(spec_for(tiny_llama, chat_file, tmp_path / "q3", **cfg), cold)
    assert setup_events(again) == [WARM] and warm.stats()["dropped"] == 0
    assert again.losses() == cold.losses()
    norms = [p for n, p in kept_model(warm).named_parameters() if "norm" in n]
    assert norms and all(p.dtype == torch.bfloat16 for p in norms)
