"""This machine's speed, measured once: what turns the estimate's work per token into seconds before any
job has run on a model.

`matmul_flops` times a few fixed matrix products in the compute dtype (about a tenth of a second) and
keeps the best rate: in this process, and in a small JSON file (`cache_file`) so other processes and
restarts reuse it. `calibrated_tokens_per_s` divides it by the training work per token of a job: a
forward and a backward pass through the frozen base are about 4 x its parameters in multiply-adds x 2
(the weights get no gradient), checkpointing adds a forward pass, and `TRAIN_EFFICIENCY` is the share of
the bare matmul rate a real training step reaches (Python, norms, attention, the optimizer; measured on
SmolLM2-135M on a CPU). Once this model's jobs have finished, their measured rate is preferred (the caller's
choice: `jobs.training.selectors.measured_tokens_per_s`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

SIZE = 512  # square matrices: big enough for the kernels' full speed, small enough to time in ~0.1 s
REPEATS = 10  # the best of them: other processes on the machine slow some down
# The share of the bare matmul rate a training step reaches. CPU, measured: SmolLM2-135M, demo dataset, batch 8,
# bf16 on a 2-core AVX-512 BF16 machine: ~90 tokens/s once warm where these matmuls ran at up to 360 GFLOP/s
# (small matmuls, norms, attention and Python between them). CUDA: a guess, not yet measured.
TRAIN_EFFICIENCY = {"cpu": 0.15, "cuda": 0.35}
# The 4-bit weights are dequantized before every product: on that CPU three demo steps took 333 s with QLoRA and
# 72 s in bf16 (loading included). On a GPU the dequantizing kernels cost far less.
QLORA_SLOWDOWN = {"cpu": 3.0, "cuda": 1.3}
_memo: dict[str, float] = {}


def _measure(device: str, width: int) -> float:
    import torch

    dtype = torch.bfloat16 if width == 2 else torch.float32
    a = torch.randn(SIZE, SIZE, dtype=dtype, device=device)
    b = torch.randn(SIZE, SIZE, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        (a @ b).sum().item()  # .item() waits for a GPU
        best = min(best, time.perf_counter() - started)
    return 2 * SIZE**3 / max(best, 1e-9)


def matmul_flops(device: str, width: int, cache_file: Path | None = None) -> float:
    """FLOP/s of a bf16 (width 2) or fp32 (width 4) matrix product on `device`: measured once, then cached."""
    key = f"{device}-{width}"
    if key in _memo:
        return _memo[key]
    cached = {}
    if cache_file is not None:
        try:
            cached = json.loads(Path(cache_file).read_text())
        except (OSError, ValueError):
            cached = {}
    rate = cached.get(key)
    if not isinstance(rate, (int, float)) or rate <= 0:
        rate = _measure(device, width)
        if cache_file is not None:
            try:
                Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(f"{cache_file}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({**cached, key: rate}))
                tmp.replace(cache_file)  # atomic: a reader never sees half a file
            except OSError:
                pass  # a read-only disk: the in-process cache still holds
    _memo[key] = float(rate)
    return float(rate)


def work_flops_per_token(base_params: int, *, gradient_checkpointing: bool) -> float:
    """Floating-point operations of one trained token: forward (2N) + backward to the inputs (2N), the frozen
    base getting no weight gradient; checkpointing recomputes the forward."""
    return (6 if gradient_checkpointing else 4) * base_params


def calibrated_tokens_per_s(
    flops: float, base_params: int, *, gradient_checkpointing: bool, qlora: bool, device: str = "cpu"
) -> float:
    """Training tokens per second this machine should reach, from its measured matmul rate."""
    kind = "cpu" if device == "cpu" else "cuda"
    rate = (
        flops
        * TRAIN_EFFICIENCY[kind]
        / work_flops_per_token(base_params, gradient_checkpointing=gradient_checkpointing)
    )
    return rate / QLORA_SLOWDOWN[kind] if qlora else rate
