"""Optional CUDA kernels for training: Liger's Triton kernels (`liger`) and flash-attention's variable-length
kernels for padding-free packing. Both are extras of the GPU workers (requirements-gpu.txt), never of the
CPU install, so everything here imports them lazily and says plainly what is missing.

Liger is applied to the base before PEFT wraps it (its RMSNorm / SwiGLU modules are patched in place and
LoRA's layers wrap the projections the patched MLP calls); RoPE stays transformers' (see apply_liger).
Liger's fused linear cross-entropy is not patched into the model's forward: the engine computes its own loss
from the hidden states at labelled positions (worker.loss), so the fused head + loss is called there, on a
model `apply_liger` marked.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from worker.config import TrainConfig


class DeviceChoice(Protocol):
    """What these checks read of `worker.modeling.DeviceChoice` (named here so the two modules stay one-way)."""

    @property
    def is_cuda(self) -> bool: ...


LIGER_NEEDS_CUDA = "Liger kernels need a CUDA GPU and this worker has none; turn the liger setting off"
LIGER_MISSING = (
    "Liger kernels are not installed on this worker: install liger-kernel on the GPU workers "
    "(requirements-gpu.txt), or turn the liger setting off"
)
FUSED_LOSS_FLAG = "_lora_studio_fused_loss"


def has_package(name: str) -> bool:
    """True when `name` can be imported here (without importing it: triton's import is slow)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def liger_problem(cfg: TrainConfig, device: DeviceChoice) -> str | None:
    """Why this run cannot use Liger (a message for the user), or None when it can or does not ask."""
    if not getattr(cfg, "liger", False):
        return None
    if not device.is_cuda:
        return LIGER_NEEDS_CUDA
    if not has_package("liger_kernel"):
        return LIGER_MISSING
    return None


def padding_free(cfg: TrainConfig, device: DeviceChoice) -> bool:
    """Packed rows go to flash-attention's variable-length kernels (no mask, position ids restart per
    example) when packing is on, on CUDA, with flash_attn installed; else SDPA with the block mask."""
    return bool(getattr(cfg, "packing", False)) and device.is_cuda and has_package("flash_attn")


def attn_implementation(cfg: TrainConfig | None, device: DeviceChoice) -> str | None:
    """The attention kernel to load the base with: flash_attention_2 for padding-free packing, else the
    transformers default (SDPA)."""
    return "flash_attention_2" if cfg is not None and padding_free(cfg, device) else None


def apply_liger(model: Any) -> list[str]:
    """Patch Liger's RMSNorm and SwiGLU into this `model` instance (the base, before PEFT); returns what was
    applied. Mark the model so worker.loss uses Liger's fused linear cross-entropy (it needs nothing of the
    model but its LM head, so every architecture gets it).

    Liger's apply functions also replace module-level names of the architecture (its RMSNorm and MLP classes,
    its rotary function), which would change every model of that kind the worker loads later, liger or not:
    those names are put back, so only this instance is patched. RoPE is therefore left out: Liger patches it
    only module-wide.
    """
    import sys

    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    applied: list[str] = []
    if getattr(model.config, "model_type", None) in MODEL_TYPE_TO_APPLY_LIGER_FN:
        module = sys.modules[type(model).__module__]
        before = dict(vars(module))
        try:
            _apply_liger_kernel_to_instance(
                model=model,
                rope=False,
                rms_norm=True,
                swiglu=True,
                cross_entropy=False,
                fused_linear_cross_entropy=False,
            )
        finally:
            for name, value in before.items():
                if vars(module).get(name) is not value:
                    setattr(module, name, value)
        applied = ["rms_norm", "swiglu"]
    setattr(model, FUSED_LOSS_FLAG, True)
    return applied + ["fused_linear_cross_entropy"]


def uses_fused_loss(causal: object) -> bool:
    return bool(getattr(causal, FUSED_LOSS_FLAG, False))


def fused_linear_cross_entropy_sum(head: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of `head(hidden)` against `targets` without materialising the logits (Liger)."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    # The kernel multiplies in the head weight's dtype: the hidden states are given to it in that dtype.
    hidden = hidden.to(head.weight.dtype).contiguous()
    loss: torch.Tensor = LigerFusedLinearCrossEntropyLoss(reduction="sum")(
        head.weight, hidden, targets, getattr(head, "bias", None)
    )
    return loss
