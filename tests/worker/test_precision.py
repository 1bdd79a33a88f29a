"""Precision: the frozen base in bf16 where the CPU multiplies it natively, LoRA weights, modules_to_save and
the optimizer state in fp32; checkpoints, resume, merge and the chat worker follow."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from worker import modeling
from worker.config import ConfigError, TrainConfig, TrainSpec
from worker.engine import train
from worker.estimate import estimate
from worker.export import merge_adapter
from worker.inference import ModelPool
from worker.modeling import CPU_BF16_ENV, choose_device, cpu_has_native_bf16, train_device
from worker.reporting import MemoryReporter

FAST = dict(batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, target_preset="all_linear", rank=8, alpha=16)


@pytest.fixture
def native_bf16(monkeypatch):
    """This CPU multiplies bf16 natively (the suite otherwise runs as on one that does not)."""
    monkeypatch.setenv(CPU_BF16_ENV, "1")


def spec_for(model_dir, data, out, **cfg):
    return TrainSpec(str(model_dir), str(data), str(out), TrainConfig(**{**FAST, **cfg}), device="cpu")


def test_cpu_bf16_is_detected_from_the_cpu_flags(monkeypatch, tmp_path):
    monkeypatch.delenv(CPU_BF16_ENV)
    for flags, native in (
        ("fpu sse avx512f avx512bw", False),
        ("fpu avx512f avx512_bf16 avx512_fp16", True),
        ("fpu amx_tile amx_bf16", True),
    ):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\n")
        monkeypatch.setattr(modeling, "CPUINFO", str(cpuinfo))
        modeling._cpu_flags_bf16.cache_clear()
        assert cpu_has_native_bf16() is native, flags
        assert choose_device("cpu").dtype == (torch.bfloat16 if native else torch.float32)
    monkeypatch.setattr(modeling, "CPUINFO", str(tmp_path / "missing"))
    modeling._cpu_flags_bf16.cache_clear()
    assert cpu_has_native_bf16() is False
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert cpu_has_native_bf16() is True
    modeling._cpu_flags_bf16.cache_clear()


def test_precision_choices_on_a_cpu(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert choose_device("cpu").precision == "fp32"
    assert choose_device("cpu", "bf16").precision == "bf16"  # asked for: emulated, slower, still right
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert choose_device("cpu").precision == "bf16" and choose_device("cpu", "auto").dtype == torch.bfloat16
    assert choose_device("cpu", "fp32").dtype == torch.float32
    with pytest.raises(ConfigError) as err:
        choose_device("cpu", "fp16")
    assert err.value.field == "precision" and "CUDA" in err.value.message
    # trained biases sit inside the base's layers: auto keeps them (and so the base) in fp32
    assert train_device("cpu", TrainConfig(bias="all")).precision == "fp32"
    assert train_device("cpu", TrainConfig()).precision == "bf16"


def test_precision_is_validated_with_the_config():
    assert TrainConfig().precision == "auto"
    assert TrainConfig.from_dict({"precision": "bf16"}).precision == "bf16"
    for bad, field in (
        ({"precision": "fp64"}, "precision"),
        ({"precision": 16}, "precision"),
        ({"precision": "bf16", "bias": "all"}, "precision"),
    ):
        with pytest.raises(ConfigError) as err:
            TrainConfig.from_dict(bad)
        assert err.value.field == field


def test_bf16_base_trains_fp32_lora_and_optimizer_and_tracks_the_fp32_curve(
    tiny_llama, chat_file, tmp_path, native_bf16
):
    """The tolerance: every step's bf16 loss within 8 % of fp32's (+ 0.02), the mean gap under 3 %."""
    runs = {}
    for precision in ("fp32", "auto"):
        reporter = MemoryReporter()
        recorded = []
        reporter.precision = recorded.append
        result = train(
            spec_for(tiny_llama, chat_file, tmp_path / precision, epochs=6, precision=precision, save_every=5), reporter
        )
        runs[precision] = (result, reporter, recorded)
    result, reporter, recorded = runs["auto"]
    assert result.precision == "bf16" and recorded == ["bf16"] and runs["fp32"][2] == ["fp32"]
    assert any("precision bf16" in message for kind, message in reporter.events if kind == "setup")
    model = result.model
    frozen = [p for n, p in model.named_parameters() if not p.requires_grad and p.is_floating_point()]
    trained = [p for p in model.parameters() if p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert trained and all(p.dtype == torch.float32 for p in trained)
    state = json.loads((tmp_path / "auto/checkpoints/step-000010/trainer_state.json").read_text())
    assert state["precision"] == "bf16"
    moments = load_file(str(tmp_path / "auto/checkpoints/step-000010/optimizer.safetensors"))
    assert moments and all(t.dtype == torch.float32 for t in moments.values())
    adapter = load_file(str(tmp_path / "auto/adapter/adapter_model.safetensors"))
    assert all(t.dtype == torch.float32 for t in adapter.values())

    bf16, fp32 = runs["auto"][1].losses(), runs["fp32"][1].losses()
    assert sorted(bf16) == sorted(fp32) == list(range(1, 13))
    gaps = [abs(bf16[s] - fp32[s]) / fp32[s] for s in fp32]
    assert all(abs(bf16[s] - fp32[s]) <= 0.08 * fp32[s] + 0.02 for s in fp32), (bf16, fp32)
    assert sum(gaps) / len(gaps) < 0.03, gaps
    assert bf16[12] < 0.35 * bf16[1]
    assert bf16 != fp32, "the bf16 run must really have run in bf16"


def test_modules_to_save_train_in_fp32_over_a_bf16_base(tiny_llama, chat_file, tmp_path, native_bf16):
    reporter = MemoryReporter()
    result = train(spec_for(tiny_llama, chat_file, tmp_path / "m", epochs=3, modules_to_save=("lm_head",)), reporter)
    assert result.precision == "bf16"
    copies = {n: p for n, p in result.model.named_parameters() if "modules_to_save" in n}
    assert copies and all(p.requires_grad and p.dtype == torch.float32 for p in copies.values())
    losses = reporter.losses()
    assert losses[max(losses)] < losses[1]
    ids = torch.tensor([[1, 5, 9, 20]])
    with torch.no_grad():
        logits = result.model(input_ids=ids).logits
        assert logits.dtype == torch.bfloat16  # handed back at the input's dtype, so the network stays bf16
        # the saved adapter loads on an fp32 base and on a bf16 one
        for dtype in (torch.float32, torch.bfloat16):
            base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=dtype)
            reloaded = PeftModel.from_pretrained(base, result.adapter_dir)(input_ids=ids).logits
            gap = (reloaded.float() - logits.float()).abs()
            assert gap.mean() < 0.03 * logits.float().abs().mean(), dtype


def test_bf16_pause_and_resume_continue_the_same_curve(tiny_llama, chat_file, tmp_path, native_bf16):
    straight = MemoryReporter()
    train(spec_for(tiny_llama, chat_file, tmp_path / "a", epochs=4, dropout=0.1), straight)
    first = MemoryReporter()
    paused = train(
        spec_for(tiny_llama, chat_file, tmp_path / "b", epochs=4, dropout=0.1),
        first,
        lambda: "pause" if len(first.points) >= 3 else None,
    )
    assert paused.status == "paused" and paused.precision == "bf16"
    second = MemoryReporter()
    resumed = train(spec_for(tiny_llama, chat_file, tmp_path / "b", epochs=4, dropout=0.1), second)
    assert resumed.status == "succeeded" and [s for s, _ in second.points] == list(range(4, 9))
    expected = straight.losses()
    for step, loss in second.losses().items():
        assert abs(loss - expected[step]) < 1e-4, (step, loss, expected[step])
    assert not [m for kind, m in second.events if kind == "warning"]


def test_resume_under_another_precision_says_so(tiny_llama, chat_file, tmp_path, monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    first = MemoryReporter()
    train(
        spec_for(tiny_llama, chat_file, tmp_path / "b", epochs=3),
        first,
        lambda: "pause" if len(first.points) >= 2 else None,
    )
    monkeypatch.setenv(CPU_BF16_ENV, "0")  # the job moved to a worker without native bf16
    second = MemoryReporter()
    assert train(spec_for(tiny_llama, chat_file, tmp_path / "b", epochs=3), second).precision == "fp32"
    assert any("bf16" in m and "fp32" in m for kind, m in second.events if kind == "warning")


def test_merge_of_a_bf16_run_is_saved_in_the_bases_own_dtype(tiny_llama, chat_file, tmp_path, native_bf16):
    result = train(spec_for(tiny_llama, chat_file, tmp_path / "t", epochs=2), MemoryReporter())
    assert result.precision == "bf16"
    merged_dir = merge_adapter(str(tiny_llama), result.adapter_dir, tmp_path / "merged")
    weights = load_file(str(merged_dir / "model.safetensors"))
    assert weights and all(t.dtype == torch.float32 for t in weights.values())  # the tiny base is fp32
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(merged_dir)(input_ids=ids).logits
        exact = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), result.adapter_dir)(
            input_ids=ids
        ).logits
    assert torch.allclose(merged, exact, atol=1e-4), "the merge must not round the fp32 base to bf16"


def test_chat_worker_loads_the_base_in_the_same_precision(tiny_llama, native_bf16):
    pool = ModelPool(device="cpu")
    assert pool.device.precision == "bf16"
    loaded = pool.base(str(tiny_llama))
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_estimate_counts_the_base_at_its_precision(tiny_llama):
    kwargs = dict(n_examples=100, mean_tokens=50, device="cpu")
    fp32 = estimate(str(tiny_llama), TrainConfig(precision="fp32"), **kwargs).breakdown
    bf16 = estimate(str(tiny_llama), TrainConfig(precision="bf16"), **kwargs).breakdown
    auto = estimate(str(tiny_llama), TrainConfig(), **kwargs).breakdown
    assert bf16["base_weights"] == pytest.approx(fp32["base_weights"] / 2)
    assert bf16["activations"] == pytest.approx(fp32["activations"] / 2)
    assert bf16["lora_training"] == fp32["lora_training"]  # LoRA weights and AdamW stay fp32
    assert auto == fp32, "auto on a CPU counts the upper bound"
