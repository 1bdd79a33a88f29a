"""CUDA-path plumbing testable on the CPU: the liger setting (validation, refusal without CUDA or without the
package, the fused-loss path with a stand-in kernel), padding-free packed batches, and the MFU arithmetic."""

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from worker import kernels
from worker.batching import collate_packed, make_batch
from worker.config import ConfigError, TrainConfig, TrainSpec
from worker.data.tokenization import IGNORE_INDEX, TokenizedExample
from worker.engine import TrainingRun, train
from worker.errors import TrainingError
from worker.loss import summed_token_loss
from worker.mfu import device_peak_flops, flops_per_token_of, mfu, model_flops_per_token
from worker.modeling import DeviceChoice, build_peft_model, load_base_model
from worker.reporting import MemoryReporter
from worker.warm import base_key

CPU = DeviceChoice("cpu", torch.float32)
CUDA = DeviceChoice("cuda", torch.bfloat16)
FAST = dict(
    batch_size=4,
    learning_rate=1e-2,
    warmup_ratio=0.0,
    target_preset="all_linear",
    rank=8,
    alpha=16,
    max_steps=2,
    final_eval=False,
)


def _examples(lengths):
    torch.manual_seed(3)
    return [
        TokenizedExample(input_ids=torch.randint(3, 300, (n,)).tolist(), labels=list(range(1, n + 1))) for n in lengths
    ]


# --- the liger setting ------------------------------------------------------------------------------------


def test_liger_is_a_validated_boolean():
    assert TrainConfig().liger is False
    assert TrainConfig(liger=True).liger is True
    with pytest.raises(ConfigError) as err:
        TrainConfig(liger="yes")
    assert err.value.field == "liger"


def test_liger_problem_names_what_is_missing(monkeypatch):
    assert kernels.liger_problem(TrainConfig(), CPU) is None
    assert "need a CUDA GPU" in kernels.liger_problem(TrainConfig(liger=True), CPU)
    monkeypatch.setattr(kernels, "has_package", lambda name: False)
    assert "install liger-kernel on the GPU workers" in kernels.liger_problem(TrainConfig(liger=True), CUDA)
    monkeypatch.setattr(kernels, "has_package", lambda name: name == "liger_kernel")
    assert kernels.liger_problem(TrainConfig(liger=True), CUDA) is None


def test_a_liger_run_on_the_cpu_is_refused_before_loading(tiny_llama, chat_file, tmp_path):
    spec = TrainSpec(str(tiny_llama), str(chat_file), str(tmp_path), TrainConfig(**FAST, liger=True), device="cpu")
    with pytest.raises(TrainingError, match="Liger kernels need a CUDA GPU"):
        train(spec, MemoryReporter())


def test_the_fused_loss_path_gives_the_same_loss_and_gradients(tiny_llama, monkeypatch):
    """With the model marked for Liger's fused linear cross-entropy, worker.loss hands the kernel the hidden
    states at labelled positions and the head's weight (a stand-in computes it here: no Triton on CPU)."""
    calls = []

    def stand_in(head, hidden, targets):
        calls.append(hidden.shape[0])
        return torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum")

    monkeypatch.setattr(kernels, "fused_linear_cross_entropy_sum", stand_in)
    base = load_base_model(str(tiny_llama), CPU)
    model, _ = build_peft_model(base, TrainConfig(dropout=0.0, target_preset="all_linear"))
    batch = collate_packed(_examples([9, 14, 6]), "cpu")
    plain, n_plain = summed_token_loss(model, batch)
    plain.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    setattr(base, kernels.FUSED_LOSS_FLAG, True)
    fused, n_fused = summed_token_loss(model, batch)
    fused.backward()
    assert calls == [n_plain] and n_fused == n_plain
    assert torch.allclose(fused, plain, rtol=1e-5)
    for p, g in zip([p for p in model.parameters() if p.requires_grad], grads):
        assert torch.allclose(p.grad, g, atol=1e-6)


def test_warm_bases_with_and_without_kernels_are_kept_apart(tiny_llama):
    assert base_key(str(tiny_llama), CPU, TrainConfig()) != base_key(str(tiny_llama), CPU, TrainConfig(liger=True))
    assert base_key(str(tiny_llama), CPU, TrainConfig()) == base_key(str(tiny_llama), CPU, TrainConfig(rank=4))


# --- padding-free packing -----------------------------------------------------------------------------------


def test_padding_free_only_with_packing_cuda_and_flash_attn(monkeypatch):
    monkeypatch.setattr(kernels, "has_package", lambda name: name == "flash_attn")
    assert kernels.padding_free(TrainConfig(packing=True), CUDA)
    assert kernels.attn_implementation(TrainConfig(packing=True), CUDA) == "flash_attention_2"
    assert not kernels.padding_free(TrainConfig(packing=True), CPU)
    assert not kernels.padding_free(TrainConfig(packing=False), CUDA)
    assert kernels.attn_implementation(None, CUDA) is None
    monkeypatch.setattr(kernels, "has_package", lambda name: False)
    assert not kernels.padding_free(TrainConfig(packing=True), CUDA)
    assert kernels.attn_implementation(TrainConfig(packing=True), CUDA) is None


def test_padding_free_rows_restart_positions_and_carry_no_mask():
    lengths = [5, 3, 7]
    examples = _examples(lengths)
    flat = make_batch(examples, 0, "cpu", True, padding_free=True)
    masked = make_batch(examples, 0, "cpu", True)
    assert flat.attention_mask is None and masked.attention_mask.shape == (1, 1, 15, 15)
    assert flat.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6]]
    assert torch.equal(flat.ids, masked.ids) and torch.equal(flat.labels, masked.labels)
    assert flat.tokens == 15
    # every example's first token is unlabelled: none is trained to predict across a boundary
    starts = [0, 5, 8]
    assert all(flat.labels[0, s].item() == IGNORE_INDEX for s in starts)
    assert (flat.labels[0] != IGNORE_INDEX).sum().item() == 15 - 3


def test_restarting_positions_mark_the_example_boundaries_flash_attention_reads(tiny_llama):
    """transformers' flash-attention path finds the examples where position ids drop back to 0; the
    boundaries it would find are the examples', and the packed logits under the block mask (SDPA, the
    fallback) equal each example run alone."""
    lengths = [6, 11, 4]
    batch = make_batch(_examples(lengths), 0, "cpu", True, padding_free=True)
    pos = batch.position_ids[0]
    starts = (pos == 0).nonzero()[:, 0].tolist()
    cu_seqlens = starts + [pos.numel()]
    assert [b - a for a, b in zip(cu_seqlens, cu_seqlens[1:])] == lengths
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    masked = collate_packed(_examples(lengths), "cpu")
    with torch.no_grad():
        packed = model(
            input_ids=masked.ids, attention_mask=masked.attention_mask, position_ids=masked.position_ids
        ).logits[0]
        alone = [model(input_ids=batch.ids[:, a:b]).logits[0] for a, b in zip(cu_seqlens, cu_seqlens[1:])]
    assert torch.allclose(packed, torch.cat(alone), atol=1e-4)


# --- MFU ------------------------------------------------------------------------------------------------


def test_model_flops_per_token_follows_the_documented_convention():
    args = dict(params=1_000_000, trainable=10_000, layers=4, hidden=64, seq_len=128)
    frozen = model_flops_per_token(**args)
    assert frozen == 4 * (1_000_000 - 10_000) + 6 * 10_000 + 12 * 4 * 64 * 128
    full = model_flops_per_token(**args, frozen_base=False)
    assert full - frozen == 2 * (1_000_000 - 10_000)  # weight gradients of the base, which LoRA skips
    no_embed = model_flops_per_token(**args, embedding_params=200_000)
    assert frozen - no_embed == 4 * 200_000
    assert model_flops_per_token(**{**args, "seq_len": 256}) - frozen == 12 * 4 * 64 * 128
    with pytest.raises(ValueError):
        model_flops_per_token(**{**args, "layers": -1})


def test_device_peak_flops_by_name_and_dtype():
    assert device_peak_flops("NVIDIA H200", "bf16") == 989e12
    assert device_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert device_peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 156e12
    assert device_peak_flops("NVIDIA L4", "fp16") == 121e12
    assert device_peak_flops("NVIDIA A10G", "bf16") == 125e12
    assert device_peak_flops("NVIDIA GeForce RTX 4090", "bf16") == 165e12
    assert device_peak_flops("NVIDIA L40S", "bf16") == 362e12  # not taken for an L4 or L40
    assert device_peak_flops("Some Future GPU", "bf16") is None
    assert device_peak_flops(None, "bf16") is None
    assert device_peak_flops("NVIDIA H200", "int8") is None


def test_mfu_is_a_fraction_or_none():
    assert mfu(1e9, 1000.0, 1e13) == pytest.approx(0.1)
    assert mfu(1e9, 1000.0, None) is None


def test_flops_per_token_of_a_model_counts_its_shape(tiny_llama):
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    total = sum(p.numel() for p in base.parameters())
    embed = base.get_input_embeddings().weight.numel()
    tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
    cfg = base.config
    got = flops_per_token_of(base, 0, total, 32.0)
    assert got == 4 * (total - (0 if tied else embed)) + 12 * cfg.num_hidden_layers * cfg.hidden_size * 32


def test_the_engine_logs_mfu_when_the_peak_is_known(tiny_llama, chat_file, tmp_path, monkeypatch):
    """On the CPU no peak is known (no mfu in the metrics); with one (as on a known GPU) every step has
    mfu = FLOPs per token x tokens/s / peak."""
    spec = TrainSpec(str(tiny_llama), str(chat_file), str(tmp_path / "a"), TrainConfig(**FAST), device="cpu")
    plain = MemoryReporter()
    train(spec, plain)
    assert plain.points and all("mfu" not in m for _, m in plain.points)

    seen = {}
    original = TrainingRun.setup_mfu

    def with_peak(self):
        original(self)
        self.peak_flops = 1e12
        seen["flops"] = self.flops_per_token

    monkeypatch.setattr(TrainingRun, "setup_mfu", with_peak)
    reporter = MemoryReporter()
    train(dataclasses.replace(spec, output_dir=str(tmp_path / "b")), reporter)
    assert seen["flops"] > 0
    for _, m in reporter.points:
        assert m["mfu"] == pytest.approx(seen["flops"] * m["tokens_per_s"] / 1e12)


def test_apply_liger_patches_the_instance_only_and_marks_the_fused_loss(tiny_llama, monkeypatch):
    """Liger's apply functions also swap the architecture's module-level classes; those are put back so a
    plain job loaded later in the same worker is not changed. A stand-in liger_kernel (no Triton here)."""
    import sys
    import types

    from transformers.models.llama import modeling_llama

    original_norm, patched = modeling_llama.LlamaRMSNorm, []

    def fake_apply(model, **kwargs):
        assert kwargs["rope"] is False and kwargs["fused_linear_cross_entropy"] is False
        modeling_llama.LlamaRMSNorm = object  # what Liger's apply_liger_kernel_to_llama does module-wide
        patched.append(model)

    liger = types.ModuleType("liger_kernel")
    transformers_mod = types.ModuleType("liger_kernel.transformers")
    transformers_mod._apply_liger_kernel_to_instance = fake_apply
    monkey = types.ModuleType("liger_kernel.transformers.monkey_patch")
    monkey.MODEL_TYPE_TO_APPLY_LIGER_FN = {"llama": fake_apply}
    for name, mod in (
        ("liger_kernel", liger),
        ("liger_kernel.transformers", transformers_mod),
        ("liger_kernel.transformers.monkey_patch", monkey),
    ):
        monkeypatch.setitem(sys.modules, name, mod)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert kernels.apply_liger(model) == ["rms_norm", "swiglu", "fused_linear_cross_entropy"]
    assert patched == [model] and kernels.uses_fused_loss(model)
    assert modeling_llama.LlamaRMSNorm is original_norm
