"""FastDropout: the same statistics and gradients as inverted dropout, seeded, swapped into LoRA."""

import pytest
import torch

from worker.config import TrainConfig
from worker.dropout import FastDropout, use_fast_dropout
from worker.modeling import build_peft_model, choose_device, load_base_model


def test_drops_about_p_unbiased_and_identity_in_eval():
    torch.manual_seed(0)
    layer = FastDropout(0.1)
    x = torch.ones(1000, 1000)
    y = layer(x)
    kept = (y != 0).float().mean().item()
    assert kept == pytest.approx(0.9, abs=0.002)
    assert y.mean().item() == pytest.approx(1.0, abs=0.003), "inverted dropout keeps the expectation"
    values = torch.unique(y).tolist()
    assert values[0] == 0.0 and len(values) == 2 and values[1] == pytest.approx(1 / (1 - 6554 / 65536))
    layer.eval()
    assert torch.equal(layer(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)


def test_gradient_flows_only_through_kept_elements():
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    y = FastDropout(0.3)(x)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], FastDropout(0.3).scale))
    assert torch.count_nonzero(x.grad[~kept]) == 0


def test_same_seed_same_mask():
    x = torch.randn(50, 50)
    torch.manual_seed(3)
    a = FastDropout(0.2)(x)
    torch.manual_seed(3)
    b = FastDropout(0.2)(x)
    assert torch.equal(a, b)


def test_swapped_into_every_lora_dropout(tiny_llama):
    model, _ = build_peft_model(
        load_base_model(str(tiny_llama), choose_device("cpu")), TrainConfig(dropout=0.05, target_preset="all_linear")
    )
    lora_layers = [m for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)]
    assert use_fast_dropout(model) == len(lora_layers) == 14  # 2 layers x 7 Linear targets
    assert all(isinstance(m.lora_dropout["default"], FastDropout) for m in lora_layers)
    no_dropout, _ = build_peft_model(load_base_model(str(tiny_llama), choose_device("cpu")), TrainConfig(dropout=0.0))
    assert use_fast_dropout(no_dropout) == 0, "p = 0 is PEFT's Identity, nothing to swap"
