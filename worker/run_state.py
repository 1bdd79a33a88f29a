"""The state of a training run (`worker.engine`) in small groups: what its setup builds (the data `RunData`, the
optimizer and its schedule `Optimization`, the output folders `Folders`) and what it ends with (`TrainResult`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.batching import MicroBatchStream
from worker.config import TrainConfig
from worker.data.tokenization import TokenizedExample, TokenizedPair
from worker.devices import EvalShare
from worker.errors import TrainingError
from worker.schedule import lr_multiplier, warmup_steps

if TYPE_CHECKING:
    from worker.modeling import DeviceChoice


@dataclass
class RunData:
    """The tokenizer, the tokenized examples (or pairs), their micro-batches step by step, this rank's share
    of the eval examples, and the step plan."""

    tokenizer: Any
    examples: list[TokenizedExample] | list[TokenizedPair]
    stream: MicroBatchStream
    per_epoch: int
    total_steps: int
    eval_every: int  # evaluate every this many steps (and at the last)
    eval: EvalShare

    @property
    def pad_id(self) -> int:
        pad_id: int = self.tokenizer.pad_token_id
        return pad_id


@dataclass
class Optimization:
    """The trained parameters, the optimizer over them and the learning-rate schedule."""

    params: list[Any]
    optimizer: Any
    scheduler: Any


def build_optimizer(params: list[Any], cfg: TrainConfig, device: DeviceChoice) -> Any:
    """AdamW, or bitsandbytes' paged 8-bit AdamW on CUDA (a quarter of the optimizer memory)."""
    import torch

    if cfg.optimizer == "paged_adamw_8bit":
        if not device.is_cuda:
            raise TrainingError("The paged 8-bit AdamW optimizer needs a CUDA GPU and this worker has none; "
                                "retry with optimizer adamw.")
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(  # type: ignore[no-untyped-call]
            params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def build_optimization(model: Any, cfg: TrainConfig, device: DeviceChoice, total_steps: int) -> Optimization:
    """The optimizer over the model's trainable parameters and the warmup + decay schedule."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg, device)
    warmup, kind = warmup_steps(cfg, total_steps), cfg.lr_scheduler
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, total_steps, warmup, kind))
    return Optimization(params=params, optimizer=optimizer, scheduler=scheduler)


@dataclass(frozen=True)
class Folders:
    """Where one job writes, under its output folder."""

    out: Path

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def best(self) -> Path:
        return self.out / "best-adapter"  # keep_best: the adapter of the lowest eval loss so far

    @property
    def adapter(self) -> Path:
        return self.out / "adapter"

    @property
    def initial(self) -> Path:
        return self.out / "initial-adapter"  # PiSSA: the adapter before any step, to convert the result


@dataclass
class TrainResult:
    status: str  # succeeded | cancelled | paused
    steps_done: int
    total_steps: int
    final_loss: float | None = None
    adapter_dir: str | None = None
    targets: list[str] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    seconds: float = 0.0
    best_step: int | None = None  # the step whose adapter was kept (lowest eval loss), when keep_best
    best_eval_loss: float | None = None
    stopped_early: bool = False
    model: Any = field(default=None, repr=False)  # the trained PEFT model, for evaluation right away
    precision: str = ""  # the frozen base's dtype: fp32, bf16 or fp16
