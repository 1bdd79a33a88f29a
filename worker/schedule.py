"""The training plan as pure functions: optimizer steps per epoch, the learning-rate factor at
each step, the order of micro-batches in each epoch, and how often to evaluate."""

from __future__ import annotations

import math
import random

from worker.config import TrainConfig


def lr_multiplier(step: int, total: int, warmup: int, kind: str) -> float:
    """Learning-rate factor at optimizer step `step` (0-based): warmup then linear/cosine/constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """Optimizer steps of linear warmup: `warmup_ratio` of the run, rounded."""
    return int(round(cfg.warmup_ratio * total_steps))


def plan_steps(n_examples: int, cfg: TrainConfig) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps)."""
    micro_per_epoch = math.ceil(n_examples / cfg.batch_size)
    per_epoch = max(1, math.ceil(micro_per_epoch / cfg.grad_accum))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    return per_epoch, total


def eval_interval(cfg: TrainConfig, total_steps: int) -> int:
    """Optimizer steps between evaluations: `eval_every`, else about ten evaluations per run."""
    return cfg.eval_every or max(1, total_steps // 10)


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled, length-grouped micro-batches for one epoch; a pure function of (seed, epoch).

    Examples are shuffled, grouped into windows of 50 batches, sorted by length inside each
    window (little padding), split into batches, and the batch order is shuffled again.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches
