"""A faster dropout for LoRA training on CPU.

On CPU, `nn.Dropout` spends most of its time in `bernoulli_` (about 8 % of a training step of the
demo model: 4 LoRA targets x 30 layers draw a mask each). Comparing uniform 16-bit integer draws
with a threshold gives the same kind of mask in about half the time. The drop probability is p
rounded to 1/65536 (0.05 -> 0.0500031) and the scale is exactly 1 / (1 - that), so the output
stays unbiased. Draws come from torch's seeded generator: runs repeat, and a checkpoint's RNG
state restores them. Only the bool mask is kept for backward, as `nn.Dropout` does.
"""

from __future__ import annotations

from typing import Any

import torch


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None, None


class FastDropout(torch.nn.Module):
    """Inverted dropout with masks drawn as 16-bit integers (see the module docstring)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * 65536) - 32768
        self.scale = 1.0 / (1.0 - (self.threshold + 32768) / 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        draws = torch.randint(-32768, 32768, x.shape, dtype=torch.int16, device=x.device)
        out: torch.Tensor = _MaskedScale.apply(x, draws >= self.threshold, self.scale)  # type: ignore[no-untyped-call]
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: torch.nn.Module) -> int:
    """Swap the LoRA dropout layers (nn.Dropout with p > 0) for FastDropout; returns how many."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, layer in dropouts.items():
            if isinstance(layer, torch.nn.Dropout) and layer.p > 0:
                dropouts[name] = FastDropout(layer.p)
                swapped += 1
    return swapped
