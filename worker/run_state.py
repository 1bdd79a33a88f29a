"""The state of a training run (`worker.engine`) in small groups: what its setup builds (the data `RunData`, the
optimizer and its schedule `Optimization`, the output folders `Folders`) and what it ends with (`TrainResult`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.batching import MicroBatchStream
from worker.config import TrainConfig, TrainSpec
from worker.data.tokenization import TokenizedExample, TokenizedPair
from worker.devices import EvalShare, SingleDevice
from worker.early_stopping import BestTracker
from worker.errors import TrainingError
from worker.mfu import mfu as model_flops_utilisation
from worker.reporting import Reporter, StopCheck, checkpoint_hook, write_guard
from worker.schedule import lr_multiplier, warmup_steps

if TYPE_CHECKING:
    from worker.modeling import DeviceChoice
    from worker.rft import RewardLearner
    from worker.warm import WarmBases


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
            raise TrainingError(
                "The paged 8-bit AdamW optimizer needs a CUDA GPU and this worker has none; retry with optimizer adamw."
            )
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(  # type: ignore[no-untyped-call]
            params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
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


def peak_memory_mb(device: DeviceChoice) -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident memory."""
    import torch

    if device.is_cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluation_cost(seconds: float, run_seconds: float) -> str:
    """The end-of-job evaluation's time and its share of the run, for the job's log."""
    share = 100 * seconds / run_seconds if run_seconds > 0 else 100.0
    return f"evaluation took {seconds:.1f} s, {share:.0f}% of the job"


class StopRequested(Exception):
    """A cancel or pause that arrived during setup or the end-of-job evaluation: the run ends there."""

    def __init__(self, request: str):
        super().__init__(request)
        self.request = request


class RunState:
    """One training run's state across its phases, and what it reports of itself (its step metrics and
    result); `worker.engine.TrainingRun` adds the phases."""

    def __init__(
        self,
        spec: TrainSpec,
        reporter: Reporter,
        should_stop: StopCheck,
        devices: SingleDevice | None = None,
        warm: WarmBases | None = None,
    ):
        self.spec, self.cfg = spec, spec.config
        self.devices = devices or SingleDevice()  # where the device modes differ (worker.devices)
        self.warm = warm  # bases kept loaded between jobs (the train worker's), or None: load, then let go
        self.reporter, self.should_stop = reporter, should_stop
        # Called right before every write into the output folder: raises WorkLost once another worker owns the job.
        self.guard = write_guard(reporter)
        self.checkpoint_saved = checkpoint_hook(reporter)
        self.started, self.last_poll = time.monotonic(), 0.0
        self.folders = Folders(Path(spec.output_dir))
        self.device: DeviceChoice | None = None  # worker.modeling.train_device, once set up
        self.padding_free = False  # packed rows to flash-attention's varlen kernels (worker.kernels)
        self.data: RunData | None = None
        self.opt: Optimization | None = None
        # The base as loaded (or borrowed from warm), PEFT's model on it (torch / PEFT modules: Any here).
        self.base: Any = None
        self.wrapped: Any = None
        self.model: Any = None
        self.init_dir: Path | None = None  # PiSSA: the initial adapter, for the conversion to plain LoRA
        # DPO on top of a previous adapter: its log-probs, "train" / "eval"; reinforcement: "adapter", the start's
        # adapter weights (the reference)
        self.reference: dict[str, Any] = {}
        self.learner: RewardLearner | None = None  # reinforcement: the GRPO steps and graders
        self.targets: list[str] = []
        self.trainable = self.total_params = 0
        self.flops_per_token = 0.0  # for the MFU metric (setup_mfu)
        self.peak_flops: float | None = None
        self.best = BestTracker(self.cfg.early_stopping_patience, self.cfg.early_stopping_threshold)
        self.start_step = self.step = 0
        self.loss_value: float | None = None
        self.stopped_early = False
        self.loop_started = 0.0

    @property
    def total_steps(self) -> int:
        return self.data.total_steps if self.data is not None else 0

    @property
    def train_dev(self) -> DeviceChoice:
        """The device and base dtype, once `setup` has chosen them."""
        if self.device is None:
            raise RuntimeError("the device is chosen in setup")
        return self.device

    @property
    def run_data(self) -> RunData:
        """The tokenizer, data and step plan, once `setup_data` has run."""
        if self.data is None:
            raise RuntimeError("the data is set up in setup_data")
        return self.data

    @property
    def optim(self) -> Optimization:
        """The parameters, optimizer and schedule, once `setup` has built them."""
        if self.opt is None:
            raise RuntimeError("the optimizer is built in setup")
        return self.opt

    def step_metrics(self, epoch: int, lr: float, grad_norm: Any, tokens_per_s: float) -> dict[str, Any]:
        elapsed = time.monotonic() - self.loop_started
        done_here = self.step - self.start_step
        per_epoch = self.run_data.per_epoch
        metrics: dict[str, Any] = {
            "loss": self.loss_value,
            "lr": lr,
            "epoch": epoch + ((self.step - 1) % per_epoch + 1) / per_epoch,
            "total_steps": self.total_steps,
            "tokens_per_s": tokens_per_s,
            "eta_s": elapsed / done_here * (self.total_steps - self.step),
        }
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        mfu = model_flops_utilisation(self.flops_per_token, tokens_per_s, self.peak_flops)
        if mfu is not None:
            metrics["mfu"] = mfu
        metrics["memory_mb"] = peak_memory_mb(self.train_dev)
        return metrics

    def stopped(self, request: str) -> TrainResult:
        return TrainResult(
            status="cancelled" if request == "cancel" else "paused",
            steps_done=self.step,
            total_steps=self.total_steps,
            final_loss=self.loss_value,
            targets=self.targets,
            trainable_params=self.trainable,
            total_params=self.total_params,
            seconds=time.monotonic() - self.started,
            precision=self.train_dev.precision if self.device is not None else "",
        )

    def succeeded(self, kept_step: int | None) -> TrainResult:
        """The run's result; on a rank that does not write, only how far it went."""
        if not self.devices.writes:
            return TrainResult(
                status="succeeded", steps_done=self.step, total_steps=self.total_steps, final_loss=self.loss_value
            )
        best = self.best
        return TrainResult(
            status="succeeded",
            steps_done=self.step,
            total_steps=self.total_steps,
            final_loss=self.loss_value,
            adapter_dir=str(self.folders.adapter),
            targets=self.targets,
            trainable_params=self.trainable,
            total_params=self.total_params,
            seconds=time.monotonic() - self.started,
            best_step=kept_step if best.best_step is not None else None,
            best_eval_loss=best.best_loss,
            stopped_early=self.stopped_early,
            model=self.model,
            precision=self.train_dev.precision,
        )
