"""Out-of-memory advice from one list of remedies in one order: the engine's OOM error message,
the settings of the one-click retry after an OOM, and the estimator's changes that make a job fit."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from worker.config import TrainConfig

OUT_OF_MEMORY = "out_of_memory"  # the `code` of the TrainingError raised when training runs out of memory

MemoryOf = Callable[[TrainConfig], float]  # estimated MiB a configuration needs


@dataclass(frozen=True)
class Tip:
    """One fitting change: its words and the settings it changes (what the form's Apply button sets)."""

    text: str
    changes: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "changes": dict(self.changes)}


def _tip(text: str, base: TrainConfig, changed: TrainConfig) -> Tip:
    return Tip(text, {k: getattr(changed, k) for k in _FIELDS if getattr(changed, k) != getattr(base, k)})


_FIELDS = ("batch_size", "grad_accum", "max_seq_length", "qlora", "gradient_checkpointing", "rank", "alpha", "sharding")


def grad_accum_for(cfg: TrainConfig, batch_size: int) -> int:
    """Gradient accumulation that keeps at least the effective batch of `cfg` at a smaller batch size."""
    return cfg.grad_accum * math.ceil(cfg.batch_size / batch_size)


def _smaller_batch(cfg: TrainConfig, memory_of: MemoryOf, limit: float) -> Tip | None:
    b = cfg.batch_size
    while b > cfg.devices:  # every device keeps at least one example of a micro-batch
        b = max(cfg.devices, b // 2)
        c = replace(cfg, batch_size=b, grad_accum=grad_accum_for(cfg, b))
        if memory_of(c) <= limit:
            return _tip(
                f"batch_size {c.batch_size} with grad_accum {c.grad_accum} (same effective batch): "
                f"~{memory_of(c):,.0f} MB",
                cfg,
                c,
            )
    return None


def _shorter_sequences(cfg: TrainConfig, memory_of: MemoryOf, limit: float) -> Tip | None:
    s = cfg.max_seq_length
    while s > 16:
        s = max(16, s // 2)
        c = replace(cfg, max_seq_length=s)
        if memory_of(c) <= limit:
            return _tip(f"max_seq_length {s} (longer examples are truncated): ~{memory_of(c):,.0f} MB", cfg, c)
    return None


def _fsdp(cfg: TrainConfig, memory_of: MemoryOf, limit: float) -> Tip | None:
    """Several devices, each with a whole base: shard it (no change to the results)."""
    if cfg.devices < 2 or cfg.sharding == "fsdp" or cfg.qlora or cfg.init_lora_weights == "pissa":
        return None
    c = replace(cfg, sharding="fsdp")
    return (
        _tip(f"sharding fsdp (the base split across the {cfg.devices} devices): ~{memory_of(c):,.0f} MB", cfg, c)
        if memory_of(c) <= limit
        else None
    )


def _qlora(cfg: TrainConfig, memory_of: MemoryOf, limit: float) -> Tip | None:
    if cfg.qlora or cfg.sharding == "fsdp":  # 4-bit weights are not sharded
        return None
    c = replace(cfg, qlora=True)
    return _tip(f"QLoRA (4-bit base): ~{memory_of(c):,.0f} MB", cfg, c) if memory_of(c) <= limit else None


def _gradient_checkpointing(cfg: TrainConfig, memory_of: MemoryOf, limit: float) -> Tip | None:
    if cfg.gradient_checkpointing:
        return None
    c = replace(cfg, gradient_checkpointing=True)
    return (
        _tip(f"gradient checkpointing (slower, ~30%): ~{memory_of(c):,.0f} MB", cfg, c)
        if memory_of(c) <= limit
        else None
    )


def _lower_rank(cfg: TrainConfig, memory_of: MemoryOf, limit: float) -> Tip | None:
    r = cfg.rank
    while r > 1:
        r = max(1, r // 2)
        c = replace(cfg, rank=r, alpha=cfg.alpha * r / cfg.rank)
        if memory_of(c) <= limit:
            return _tip(f"rank {r} (alpha {c.alpha:g}, same scale): ~{memory_of(c):,.0f} MB", cfg, c)
    return None


@dataclass(frozen=True)
class Remedy:
    """One way to need less memory: how the OOM message words it, and the estimator's fitting change."""

    advice: str
    fitting_change: Callable[[TrainConfig, MemoryOf, float], Tip | None]


# Cheapest in quality and speed first: the same order in the error message and the estimate.
REMEDIES = (
    Remedy("a smaller batch size with more gradient accumulation (same effective batch)", _smaller_batch),
    Remedy("a shorter max sequence length", _shorter_sequences),
    Remedy("QLoRA (4-bit base)", _qlora),
    Remedy("gradient checkpointing", _gradient_checkpointing),
    Remedy("a lower rank", _lower_rank),
)

ADVICE_OOM = (
    "Out of memory. Try, in this order: " + ", ".join(r.advice for r in REMEDIES[:-1]) + f", or {REMEDIES[-1].advice}."
)


def oom_suggestion(cfg: TrainConfig) -> dict[str, Any]:
    """Settings that need less memory for the same effective batch: the one-click retry after an OOM."""
    change: dict[str, Any] = {}
    if cfg.batch_size > cfg.devices:
        change["batch_size"] = max(cfg.devices, cfg.batch_size // 2)
        change["grad_accum"] = grad_accum_for(cfg, change["batch_size"])
    elif cfg.max_seq_length > 128:
        change["max_seq_length"] = max(128, cfg.max_seq_length // 2)
    if not cfg.gradient_checkpointing:
        change["gradient_checkpointing"] = True
    if not change and not cfg.qlora and cfg.sharding != "fsdp":
        change["qlora"] = True
    return change


def fitting_tips(cfg: TrainConfig, memory_of: MemoryOf, limit: float) -> list[Tip]:
    """Changes that bring `memory_of(cfg)` under `limit` MiB, one per remedy, in the order of REMEDIES, each
    with the settings it changes."""
    # Sharding first: it changes no result. Not in REMEDIES, whose words every out-of-memory error carries.
    tips = [
        tip
        for change in (_fsdp, *(r.fitting_change for r in REMEDIES))
        if (tip := change(cfg, memory_of, limit)) is not None
    ]
    return tips or [_combined_change(cfg, memory_of, limit)]


def fitting_changes(cfg: TrainConfig, memory_of: MemoryOf, limit: float) -> list[str]:
    """`fitting_tips`' words only."""
    return [tip.text for tip in fitting_tips(cfg, memory_of, limit)]


def advice_sentence(advice: list[str]) -> str:
    """Fitting changes as one readable sentence for an error message: each a separate alternative."""
    if not advice:
        return ""
    if len(advice) == 1:
        return f"Try: {advice[0]}."
    return "Try one of these: " + "; ".join(f"({i}) {a}" for i, a in enumerate(advice, 1)) + "."


def _combined_change(cfg: TrainConfig, memory_of: MemoryOf, limit: float) -> Tip:
    """No single change is enough: the smallest micro-batch (one example per device), then checkpointing, QLoRA
    and shorter sequences until it fits."""
    c = replace(cfg, batch_size=cfg.devices, grad_accum=grad_accum_for(cfg, cfg.devices))
    steps = [f"batch_size {c.batch_size} with grad_accum {c.grad_accum}"]
    changes: tuple[tuple[dict[str, Any], str], ...] = (
        (dict(gradient_checkpointing=True), "gradient checkpointing"),
        (dict(qlora=True), "QLoRA"),
    )
    for change, label in changes:
        if memory_of(c) <= limit:
            break
        if not getattr(c, next(iter(change))) and not (label == "QLoRA" and c.sharding == "fsdp"):
            c = replace(c, **change)
            steps.append(label)
    while memory_of(c) > limit and c.max_seq_length > 16:
        c = replace(c, max_seq_length=max(16, c.max_seq_length // 2))
    if c.max_seq_length != cfg.max_seq_length:
        steps.append(f"max_seq_length {c.max_seq_length}")
    verdict = "fits" if memory_of(c) <= limit else "still does not fit"
    return _tip(
        f"no single change is enough; {' + '.join(steps)}: ~{memory_of(c):,.0f} MB ({verdict} in {limit:,.0f} MB)",
        cfg,
        c,
    )
