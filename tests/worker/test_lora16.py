"""LoRA branches in bf16 over a bf16 base: PEFT's results within bf16 rounding, fp32 weights and gradients,
PEFT's own path for a disabled adapter, DoRA, an fp32 base and the 4-bit layers."""

import pytest
import torch

from worker.config import TrainConfig
from worker.lora16 import compute_lora_in_bf16
from worker.modeling import build_peft_model, choose_device, load_base_model


def lora_model(tiny_llama, precision="bf16", **cfg):
    base = load_base_model(str(tiny_llama), choose_device("cpu", precision))
    model, _ = build_peft_model(base, TrainConfig(**{"dropout": 0.0, "target_preset": "all_linear", **cfg}))
    for name, p in model.named_parameters():  # B starts at zero: give the branch something to add
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


def loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits.float()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), logits.detach(), grads


def test_bf16_branches_match_peft_within_rounding_and_keep_fp32_weights(tiny_llama):
    torch.manual_seed(0)
    model = lora_model(tiny_llama)
    ids = torch.randint(3, 200, (3, 12))
    ref_loss, ref_logits, ref_grads = loss_and_grads(model, ids)
    assert compute_lora_in_bf16(model) == 14  # 2 layers x 7 linear targets
    loss, logits, grads = loss_and_grads(model, ids)
    assert loss != ref_loss, "the switched layers must run their own branch"
    assert loss == pytest.approx(ref_loss, rel=2e-2)
    assert (logits - ref_logits).abs().max() < 0.1 * ref_logits.abs().max()
    assert grads.keys() == ref_grads.keys() and len(grads) == 28
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, f"{name}: the master weight's gradient stays fp32"
        cos = torch.nn.functional.cosine_similarity(grad.flatten(), ref_grads[name].flatten(), dim=0)
        assert cos > 0.98, f"{name}: gradient direction {cos:.4f}"
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)

    # A disabled adapter (DPO's reference, the base side of a comparison) is the base model exactly.
    with model.disable_adapter(), torch.no_grad():
        plain = model(input_ids=ids).logits
        base_again = model.get_base_model()(input_ids=ids).logits
    assert torch.equal(plain, base_again) and not torch.allclose(plain.float(), logits, atol=1e-3)


def test_only_plain_lora_over_a_bf16_base_is_switched(tiny_llama):
    assert compute_lora_in_bf16(lora_model(tiny_llama, precision="fp32")) == 0, "fp32 base: PEFT's path"
    assert compute_lora_in_bf16(lora_model(tiny_llama, use_dora=True)) == 0, "DoRA: PEFT's variant path"


def test_the_engine_switches_them_on_a_bf16_base(tiny_llama, chat_file, tmp_path, monkeypatch):
    from worker import engine
    from worker.config import TrainSpec
    from worker.reporting import MemoryReporter

    switched = []
    real = engine.TrainingRun.setup_model

    def spy(run):
        real(run)
        switched.append(
            sum(m.forward.__func__.__module__ == "worker.lora16" for m in run.model.modules() if "forward" in vars(m))
        )

    monkeypatch.setattr(engine.TrainingRun, "setup_model", spy)
    cfg = TrainConfig(precision="bf16", max_steps=2, batch_size=2, final_eval=False, target_preset="attention")
    result = engine.train(
        TrainSpec(str(tiny_llama), str(chat_file), str(tmp_path / "out"), cfg, device="cpu"), MemoryReporter()
    )
    assert result.status == "succeeded"
    assert switched == [8]  # 2 layers x q, k, v, o


def test_qlora_computes_in_bf16_with_a_16_bit_base_around_its_4_bit_layers(tiny_llama):
    """QLoRA's non-quantized weights stay at the compute dtype (no fp32 upcast), so its hidden states and the
    LoRA branches are bf16 as 16-bit LoRA's are, and it trains."""
    from worker.modeling import train_device

    cfg = TrainConfig(qlora=True, precision="bf16", dropout=0.0, target_preset="all_linear")
    base = load_base_model(str(tiny_llama), train_device("cpu", cfg), cfg)
    assert {p.dtype for n, p in base.named_parameters() if "norm" in n or "embed" in n} == {torch.bfloat16}
    model, _ = build_peft_model(base, cfg)
    assert compute_lora_in_bf16(model) == 14
    seen = []
    model.get_base_model().model.layers[0].self_attn.q_proj.register_forward_hook(
        lambda module, args, out: seen.append((args[0].dtype, out.dtype))
    )
    ids = torch.randint(3, 200, (2, 10))
    loss = torch.nn.functional.cross_entropy(
        model(input_ids=ids).logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()
    )
    loss.backward()
    assert seen == [(torch.bfloat16, torch.bfloat16)]
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]  # B starts at zero: A's grads are 0
    assert len(grads) == 14 and all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)


def test_an_fp16_qlora_base_upcasts_its_norms_for_fp16s_range(tiny_llama):
    """fp16 (older GPUs, no loss scaling): the 4-bit base's other weights go to fp32 at load, as PEFT would."""
    from worker.modeling import DeviceChoice

    base = load_base_model(str(tiny_llama), DeviceChoice("cpu", torch.float16), TrainConfig(qlora=True))
    others = {p.dtype for n, p in base.named_parameters() if "norm" in n or "embed" in n}
    assert others == {torch.float32}
    assert any(type(p).__name__ == "Params4bit" for p in base.parameters())
