"""Model FLOPs utilisation (MFU): the FLOPs a training step needs by the model's shape, per second, over
the device's peak. Pure arithmetic, so the engine, the bench and the tests share one convention.

Convention (PaLM, Chowdhery et al. 2022, appendix B), per trained token:

* a dense matmul weight of N parameters costs 2N FLOPs forward, 2N for the gradient of its input and 2N for
  the gradient of its weight: 6N for a weight that trains;
* LoRA keeps the base frozen, so its weights need no weight gradient: 4N for the frozen base (forward +
  input gradients). We count that honest 4N, not PaLM's 6N (which would flatter a LoRA run by 1.5x), plus
  6 x the trainable (adapter) parameters;
* attention's own matmuls (QK^T and AV, no weights): 12 x layers x hidden x seq_len, PaLM's term as is
  (forward 4, backward 8; the causal half is not subtracted, as PaLM does not).

N counts the weights that take part in a matmul: the input embedding table is a lookup and is left out
unless tied to the LM head. Recomputation (gradient checkpointing) is not counted: that is MFU, not HFU.
The engine runs the LM head only at labelled positions, so it does less work than this count says for the
prompt tokens; the figure stays the standard one so it compares with other trainers.
"""

from __future__ import annotations

from typing import Any

# Dense (no sparsity) peak tensor FLOP/s by a substring of torch.cuda.get_device_name(), most specific
# first; (bf16/fp16, fp32). The fp32 figure is TF32 tensor-core where the GPU has it (torch's fp32 matmuls
# use plain fp32 unless allow_tf32 is set, so an fp32 MFU is optimistic-side low there). Vendor datasheets.
PEAK_FLOPS: list[tuple[str, float, float]] = [
    ("H200", 989e12, 494.5e12),
    ("H100 PCIe", 756e12, 378e12),
    ("H100", 989e12, 494.5e12),  # SXM
    ("GH200", 989e12, 494.5e12),
    ("A100", 312e12, 156e12),
    ("L40S", 362e12, 183e12),
    ("L40", 181e12, 90.5e12),
    ("L4", 121e12, 60e12),
    ("A10G", 125e12, 31.2e12),  # fp32: plain (the A10G's TF32 is about 62e12)
    ("A10", 125e12, 62.5e12),
    ("RTX 4090", 165e12, 82.6e12),
    ("RTX 3090", 71e12, 35.6e12),
    ("V100", 125e12, 15.7e12),  # fp16 tensor cores; no bf16
    ("T4", 65e12, 8.1e12),
]
HALF = ("bf16", "fp16", "bfloat16", "float16")
SINGLE = ("fp32", "float32")


def model_flops_per_token(
    *,
    params: int,
    trainable: int,
    layers: int,
    hidden: int,
    seq_len: float,
    embedding_params: int = 0,
    frozen_base: bool = True,
) -> float:
    """Training FLOPs per token: 4 (frozen) or 6 (trained) x base matmul weights + 6 x trainable + attention.

    params: all parameters of the model, adapters included; trainable: those that train (the adapters);
    embedding_params: the input embedding table when it is not tied to the LM head (left out, a lookup);
    seq_len: the context a token attends over (the mean example length for a run).
    """
    for name, value in (
        ("params", params),
        ("trainable", trainable),
        ("layers", layers),
        ("hidden", hidden),
        ("seq_len", seq_len),
        ("embedding_params", embedding_params),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    base = max(0, params - trainable - embedding_params)
    per_base_weight = 4 if frozen_base else 6
    return per_base_weight * base + 6 * trainable + 12 * layers * hidden * seq_len


def device_peak_flops(device_name: str | None, dtype: str) -> float | None:
    """The device's dense peak FLOP/s for `dtype` ("bf16", "fp16", "fp32"), or None when unknown (CPUs,
    GPUs not in the table)."""
    if not device_name:
        return None
    column = 1 if dtype in HALF else 2 if dtype in SINGLE else 0
    if not column:
        return None
    for key, half, single in PEAK_FLOPS:
        if key.lower() in device_name.lower():
            return (half, single)[column - 1]
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak: float | None) -> float | None:
    """Fraction of the peak used (0..1), None when the peak is unknown."""
    if not peak or flops_per_token <= 0 or tokens_per_s < 0:
        return None
    return flops_per_token * tokens_per_s / peak


def flops_per_token_of(model: Any, trainable: int, total: int, seq_len: float, frozen_base: bool = True) -> float:
    """model_flops_per_token read off a transformers model (a PEFT wrapper or the base)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    config = getattr(config, "text_config", None) or config
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    embedding = 0
    inputs, outputs = base.get_input_embeddings(), base.get_output_embeddings()
    if inputs is not None and (outputs is None or outputs.weight is not inputs.weight):
        embedding = inputs.weight.numel()
    return model_flops_per_token(
        params=total,
        trainable=trainable,
        layers=layers,
        hidden=hidden,
        seq_len=seq_len,
        embedding_params=embedding,
        frozen_base=frozen_base,
    )
