"""The training entry point: `train(spec, reporter, should_stop) -> TrainResult`.

A recipe in named phases, like torchtune's: setup (seeds, device, tokenizer, data, model,
optimizer), resume from the newest readable checkpoint, the loop (one optimizer step per
iteration, the stop flag checked before each, evaluation and checkpoints between steps), save
(adapter + tokenizer, atomically), then the end-of-job evaluation. Every write into the output
folder comes right after the reporter's `guard()`, which raises WorkLost once the job is not ours.

With a `RankGroup` (one job on several devices, launched by `worker.distributed`) every rank runs
these phases on its shard of each micro-batch and the gradients are summed across ranks; rank 0
alone checks the stop flag (and tells the others), reports, and writes checkpoints and the adapter.
Without one (devices = 1) nothing of that runs. With `sharding = "fsdp"` the ranks also shard the model
(`worker.sharding`): FSDP sums the gradients, every rank runs every forward (a stand-in batch when its share
is empty, as FSDP gathers weights inside each forward) and takes part in each save (the weights are gathered
whole for rank 0 to write) and in the end-of-job evaluation.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.batching import MicroBatchStream, make_batch
from worker.checkpoint import (CheckpointUnreadable, checkpoint_folders, discard_checkpoint, load_adapter_weights,
                               load_checkpoint, prune_checkpoints, read_checkpoint, recover_leftovers, save_adapter,
                               save_checkpoint, write_text_atomic)
from worker.config import TrainConfig, TrainSpec
from worker.data.examples import Example
from worker.data.normalized import read_normalized_jsonl
from worker.data.tokenization import TokenizedExample, TokenizedPair, tokenize_examples, tokenize_pairs
from worker.early_stopping import BestTracker
from worker.errors import TrainingError
from worker.estimate import work_per_token
from worker.evaluation import evaluate_adapter, evaluate_preferences
from worker.loss import (mean_token_loss, pair_logps, preference_eval, preference_step, summed_eval_loss,
                         summed_token_loss)
from worker.kernels import liger_problem, padding_free
from worker.memory_advice import ADVICE_OOM, OUT_OF_MEMORY
from worker.mfu import mfu as model_flops_utilisation
from worker.modeling import build_peft_model, load_base_model, load_tokenizer, train_device
from worker.failpoints import failpoint
from worker.ranks import RankGroup
from worker.reporting import Reporter, StopCheck, checkpoint_hook, never_stop, precision_hook, write_guard
from worker.warm import WarmBases
from worker.schedule import eval_interval, lr_multiplier, plan_steps, warmup_steps

log = logging.getLogger(__name__)

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


def build_optimizer(params, cfg: TrainConfig, device):
    """AdamW, or bitsandbytes' paged 8-bit AdamW on CUDA (a quarter of the optimizer memory)."""
    import torch

    if cfg.optimizer == "paged_adamw_8bit":
        if not device.is_cuda:
            raise TrainingError("The paged 8-bit AdamW optimizer needs a CUDA GPU and this worker has none; "
                                "retry with optimizer adamw.")
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def peak_memory_mb(device) -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident memory."""
    import torch

    if device.is_cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


STOP_POLL_S = 1.0  # outside the loop (tokenizing, loading, evaluating) the stop flag is read at most this often
TOKENIZE_CHUNK = 256  # examples tokenized between two looks at the stop flag


class StopRequested(Exception):
    """A cancel or pause that arrived during setup or the end-of-job evaluation: the run ends there."""

    def __init__(self, request: str):
        super().__init__(request)
        self.request = request


class TrainingRun:
    """One job's state across the phases; `train` calls them in order."""

    def __init__(self, spec: TrainSpec, reporter: Reporter, should_stop: StopCheck, group: RankGroup | None = None,
                 warm: WarmBases | None = None):
        self.spec, self.cfg = spec, spec.config
        self.warm = warm  # bases kept loaded between jobs (the train worker's), or None: load, then let go
        self.base = self.wrapped = None  # the base as loaded (or borrowed from warm), and PEFT's model on it
        self.reporter, self.should_stop = reporter, should_stop
        self.group = group
        self.main = group is None or group.main  # the process that reports and writes files
        # FSDP: the model is sharded across the ranks, so they run every forward and every save together.
        self.sharded = group is not None and self.cfg.sharding == "fsdp"
        # Called right before every write into self.out: raises WorkLost once another worker owns the job.
        self.guard = write_guard(reporter)
        self.checkpoint_saved = checkpoint_hook(reporter)
        self.started = time.monotonic()
        self.out = Path(spec.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.best_dir = self.out / "best-adapter"
        self.adapter_dir = self.out / "adapter"
        self.init_dir: Path | None = None
        self.best = BestTracker(self.cfg.early_stopping_patience, self.cfg.early_stopping_threshold)
        self.start_step = self.step = 0
        self.loss_value: float | None = None
        self.stopped_early = False
        self.eval_everywhere = False  # with ranks: evaluate even with an empty share (the others wait on it)
        self.eval_fill: dict[str, Any] = {}  # FSDP: summed_eval_loss's stand-in batches, so all ranks run alike
        self.padding_free = False  # packed rows to flash-attention's varlen kernels (worker.kernels)
        self.flops_per_token, self.peak_flops = 0.0, None  # for the MFU metric (setup_mfu)
        self.reference: dict[str, Any] = {}  # DPO on top of a previous adapter: its log-probs, "train" / "eval"
        self.targets: list[str] = []
        self.trainable = self.total_params = self.total_steps = 0
        self.device = None
        self.last_poll = 0.0

    def poll_stop(self) -> None:
        """Raise StopRequested when a cancel or pause is asked for, looking at most once every STOP_POLL_S: for
        long work outside the loop, so a cancel during tokenizing, loading or evaluating acts within seconds.
        Several ranks agree on stopping only in the loop (one rank alone must not leave a collective)."""
        if self.group is not None:
            return
        now = time.monotonic()
        if now - self.last_poll < STOP_POLL_S:
            return
        self.last_poll = now
        request = self.should_stop()
        if request in ("cancel", "pause"):
            raise StopRequested(request)

    # --- setup ----------------------------------------------------------------------------

    def setup(self) -> None:
        """Seeds, device, data, model and optimizer, in this order (the seeds fix the LoRA init)."""
        import torch

        random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        self.device = train_device(self.spec.device, self.cfg)
        problem = liger_problem(self.cfg, self.device)
        if problem:
            raise TrainingError(problem)
        self.padding_free = padding_free(self.cfg, self.device)
        if self.main:
            self.recover_output()
        self.setup_data()
        self.setup_model()
        self.setup_optimizer()

    def recover_output(self) -> None:
        """Put back or clear what a crash in the middle of an atomic write left in the output folders."""
        self.guard()
        recover_leftovers(self.out)
        recover_leftovers(self.ckpt_root)

    def setup_data(self) -> None:
        """Tokenizer, tokenized train and eval examples (or preference pairs), and the step plan."""
        spec, cfg = self.spec, self.cfg
        self.reporter.event("setup", f"loading tokenizer and data on {self.device.device}")
        self.tokenizer = load_tokenizer(spec.base_model_path)
        self.pad_id = self.tokenizer.pad_token_id
        self.examples = self.tokenize(read_normalized_jsonl(spec.dataset_path))
        if not self.examples:
            raise TrainingError("no example has an assistant token left after truncation; raise max_seq_length")
        self.per_epoch, self.total_steps = plan_steps(len(self.examples), cfg)
        self.stream = MicroBatchStream(self.examples, cfg, self.per_epoch)
        self.eval_examples: list[TokenizedExample] | list[TokenizedPair] = []
        if spec.eval_dataset_path:
            self.eval_examples = self.tokenize(read_normalized_jsonl(spec.eval_dataset_path))
            if self.group is not None:  # each rank evaluates a length-balanced share
                by_length = sorted(self.eval_examples, key=lambda e: len(e.input_ids))
                if self.sharded and by_length:  # as many eval forwards on every rank as on rank 0 (the most)
                    most = len(by_length[::self.group.world])
                    self.eval_fill = {"min_batches": -(-most // cfg.batch_size), "filler": by_length[0]}
                self.eval_examples = self.group.shard(by_length)
                self.eval_everywhere = True
        self.every = eval_interval(cfg, self.total_steps)

    def tokenize(self, examples: list[Example]) -> list[TokenizedExample] | list[TokenizedPair]:
        """Examples for supervised tuning, pairs for DPO / ORPO; a dataset of the other kind is refused."""
        cfg = self.cfg
        pairs = sum(1 for e in examples if e.is_preference)
        if cfg.is_preference and pairs < len(examples):
            raise TrainingError(f"method {cfg.method} trains on preference pairs (prompt, chosen, rejected) and "
                                f"{len(examples) - pairs} of the {len(examples)} examples are not pairs")
        if not cfg.is_preference and pairs:
            raise TrainingError(f"the dataset holds {pairs} preference pairs; supervised tuning needs examples "
                                "with answers: pick method dpo or orpo")
        tokenize = tokenize_pairs if cfg.is_preference else tokenize_examples
        out: list = []
        for start in range(0, len(examples), TOKENIZE_CHUNK):
            self.poll_stop()
            out.extend(tokenize(self.tokenizer, examples[start:start + TOKENIZE_CHUNK], cfg.max_seq_length))
        return out

    def setup_model(self) -> None:
        """The frozen base wrapped with LoRA; with PiSSA, the initial adapter is kept for the conversion."""
        cfg = self.cfg
        self.reporter.event("setup", f"precision {self.device.precision}: the frozen base computes in "
                                     f"{self.device.precision}, LoRA weights and optimizer state are fp32")
        if self.main:
            precision_hook(self.reporter)(self.device.precision)
        self.poll_stop()
        self.base = self.load_base()
        self.model, self.targets = build_peft_model(self.base, cfg)
        self.wrapped = self.model
        self.poll_stop()
        if not self.device.is_cuda:  # CUDA's fused dropout is already fast
            from worker.dropout import use_fast_dropout

            use_fast_dropout(self.model)
        from worker.lora16 import compute_lora_in_bf16

        compute_lora_in_bf16(self.model)  # a bf16 base: the LoRA branches compute in bf16 too, weights stay fp32
        if self.spec.start_adapter_dir:
            self.start_from_adapter(Path(self.spec.start_adapter_dir))
        self.trainable, self.total_params = self.model.get_nb_trainable_parameters()
        self.setup_mfu()
        if cfg.liger:
            self.reporter.event("setup", "Liger kernels: RMSNorm and SwiGLU where the architecture has them, "
                                         "and the fused linear cross-entropy")
        if self.padding_free:
            self.reporter.event("setup", "packing without padding: flash-attention's variable-length kernels")
        self.reporter.event("setup", f"LoRA on {', '.join(self.targets)}: {self.trainable:,} trainable of "
                                     f"{self.total_params:,} parameters")
        if self.sharded:
            self.shard()
        if cfg.init_lora_weights == "pissa":
            # The adapter as initialised, before any step: needed to convert the result to plain LoRA.
            self.init_dir = self.out / "initial-adapter"
            if self.main and not (self.init_dir / "adapter_model.safetensors").is_file():
                self.guard()
                save_adapter(self.model, self.init_dir)

    def setup_mfu(self) -> None:
        """FLOPs per trained token (worker.mfu's convention) and the device's peak: MFU is logged when known."""
        from worker.mfu import device_peak_flops, flops_per_token_of

        lengths = [e.length for e in self.examples] or [self.cfg.max_seq_length]
        self.flops_per_token = flops_per_token_of(self.model, self.trainable, self.total_params,
                                                  sum(lengths) / len(lengths))
        self.peak_flops = None
        if self.device.is_cuda:
            import torch

            name = torch.cuda.get_device_name()  # this process's GPU (each rank has set its own)
            self.peak_flops = device_peak_flops(name, self.device.precision)
            if self.peak_flops and self.group is not None:
                self.peak_flops *= self.group.world  # tokens/s is summed over the ranks

    def shard(self) -> None:
        """FSDP over the ranks, from rank 0's initial adapter; reports each rank's share of the frozen base."""
        from worker.sharding import shard_model

        self.group.broadcast_params([p for p in self.model.parameters() if p.requires_grad])
        share = shard_model(self.model, self.group.device)
        n = self.group.world
        held = self.group.sum([share.local_bytes if r == self.group.rank else 0 for r in range(n)])  # by rank
        self.reporter.event("setup", f"FSDP: each of {n} ranks holds about 1/{n} of the frozen base "
                                     f"({share.total_bytes / 2**20:.3f} MB): "
                                     + ", ".join(f"rank {r} {b / 2**20:.3f} MB" for r, b in enumerate(held)))

    def load_base(self):
        """The frozen base: the one kept loaded from an earlier job on it (warm start), else loaded now."""
        def announce(warm: bool) -> None:
            if warm:
                self.reporter.event("setup", "base model already loaded (warm start)")
            else:
                self.reporter.event("setup", "loading base model" + (" in 4-bit NF4 (QLoRA)" if self.cfg.qlora else ""))
            failpoint("setup")

        if self.warm is None:
            announce(False)
            return load_base_model(self.spec.base_model_path, self.device, self.cfg)
        return self.warm.acquire(self.spec.base_model_path, self.device, self.cfg, announce=announce)[0]

    def release_base(self) -> bool:
        """Give the base back to `warm` with PEFT's changes undone (PiSSA rewrote its weights: dropped);
        True when it is kept for the next job."""
        if self.warm is None or self.base is None:
            return False
        model, self.base, self.wrapped = self.wrapped or self.base, None, None
        return self.warm.release(model, reusable=self.cfg.init_lora_weights != "pissa")

    def start_from_adapter(self, folder: Path) -> None:
        """Load a previous job's adapter as the starting weights; for DPO, take the reference log-probs of every
        pair from it now, before training moves it (as TRL's precompute_ref_logps), so no copy is kept."""
        cfg = self.cfg
        try:
            saved = json.loads((folder / "adapter_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise TrainingError(f"the adapter to start from cannot be read ({exc})") from exc
        if saved.get("r") != cfg.rank or set(saved.get("target_modules") or []) != set(self.targets):
            raise TrainingError(f"the adapter to start from has rank {saved.get('r')} on "
                                f"{sorted(saved.get('target_modules') or [])}; this job needs rank {cfg.rank} on "
                                f"{sorted(self.targets)}")
        load_adapter_weights(self.model, folder)
        self.reporter.event("setup", f"starting from the adapter of job {cfg.start_from}"
                                     + (" (also DPO's reference)" if cfg.method == "dpo" else ""))
        if cfg.method == "dpo":
            for name, pairs in (("train", self.examples), ("eval", self.eval_examples)):
                self.reference[name] = pair_logps(self.model, pairs, cfg.batch_size, self.pad_id, self.device.device)

    def setup_optimizer(self) -> None:
        """The optimizer over the trainable parameters and the warmup + decay schedule."""
        import torch

        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, self.cfg, self.device)
        total, warmup, kind = self.total_steps, warmup_steps(self.cfg, self.total_steps), self.cfg.lr_scheduler
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda s: lr_multiplier(s, total, warmup, kind))

    # --- resume and checkpoints -------------------------------------------------------------

    def resume(self) -> None:
        """Continue from the newest checkpoint that reads whole: weights, optimizer, schedule, best eval.

        Unreadable checkpoints are reported and removed (else pruning could keep them over good ones).
        With several ranks, rank 0 picks the checkpoint and the others load that same one.
        """
        if self.main:
            self.resume_newest()
        if self.group is not None:
            self.resume_ranks()

    def resume_ranks(self) -> None:
        """Every rank at rank 0's step with rank 0's weights; dropout draws differ per rank."""
        import torch

        step = self.group.broadcast_int(self.start_step)
        if not self.main and step:
            ckpt = read_checkpoint(self.ckpt_root / f"step-{step:06d}")
            load_checkpoint(ckpt, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler)
            self.best.restore(ckpt.best)
            self.start_step = self.step = step
        if not self.sharded:  # a sharded model's chunks were loaded from the same full checkpoint
            self.group.broadcast_params(self.params)
        if not self.main:
            torch.manual_seed(self.cfg.seed + 7919 * self.group.rank + step)

    def resume_newest(self) -> None:
        ckpt, unreadable = None, []
        for folder in checkpoint_folders(self.ckpt_root):
            try:
                ckpt = read_checkpoint(folder)
                break
            except CheckpointUnreadable as exc:
                unreadable.append(folder)
                self.reporter.event("warning", f"{exc}; it is removed and the checkpoint before it is tried")
        if unreadable:
            self.guard()
            for folder in unreadable:
                discard_checkpoint(folder)
        names = ", ".join(folder.name for folder in unreadable)
        if ckpt is None:
            if unreadable:
                self.reporter.event("warning", f"no checkpoint could be read ({names}); starting from step 0")
            return
        load_checkpoint(ckpt, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler)
        self.best.restore(ckpt.best)
        self.start_step = self.step = ckpt.step
        saved = ckpt.state.get("precision")
        if saved and saved != self.device.precision:  # e.g. auto on a worker without native bf16
            self.reporter.event("warning", f"the checkpoint was trained with a {saved} base and this run's is "
                                           f"{self.device.precision}; the loss curve may shift slightly")
        self.reporter.event("resume", f"resumed from checkpoint at step {self.start_step}"
                                      + (f" ({names} unreadable)" if unreadable else ""))

    def checkpoint(self) -> None:
        """Save the current step's checkpoint (rank 0's: the ranks hold the same weights; sharded, every rank
        gives its shards of the adapter and the optimizer state, gathered whole for rank 0 to write)."""
        gathered: dict[str, Any] = {}
        if self.sharded:
            from worker.sharding import full_adapter_state, full_optimizer_state

            gathered = {"adapter_state": full_adapter_state(self.model),
                        "optimizer_state": full_optimizer_state(self.optimizer)}
        if not self.main:
            return
        self.guard()
        folder = save_checkpoint(self.ckpt_root, step=self.step, model=self.model, optimizer=self.optimizer,
                                 scheduler=self.scheduler,
                                 extra={"total_steps": self.total_steps, "best": self.best.state(),
                                        "precision": self.device.precision}, **gathered)
        self.checkpoint_saved(folder)

    # --- loop -------------------------------------------------------------------------------

    def loop(self) -> str | None:
        """Train up to the last step; returns "cancel" or "pause" when asked to stop first."""
        self.model.train()
        self.loop_started = time.monotonic()
        while self.step < self.total_steps:
            request = self.should_stop() if self.main else None
            if self.group is not None:
                request = self.group.agree(request)
            if request in ("cancel", "pause"):
                if request == "pause" and self.step > self.start_step:
                    self.checkpoint()
                self.reporter.event(request, f"stopped before step {self.step + 1}")
                return request
            metrics = self.train_step()
            self.evaluate(metrics)
            self.reporter.log(self.step, metrics)
            if self.best.should_stop and self.step < self.total_steps:
                self.reporter.event("early_stop", f"stopped at step {self.step}: no eval-loss improvement in "
                                                  f"{self.best.bad_evals} evaluations (best "
                                                  f"{self.best.best_loss:.4f} at step {self.best.best_step})")
                self.stopped_early = True
                return None
            if self.step % self.cfg.save_every == 0 and self.step < self.total_steps:
                self.checkpoint()
                if self.main:
                    self.guard()
                    prune_checkpoints(self.ckpt_root)
        return None

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over its accumulated micro-batches; returns the step's metrics."""
        import torch

        self.step += 1
        t0 = time.monotonic()
        epoch, micro = self.stream.for_step(self.step)
        if self.cfg.is_preference:
            step_tokens, extra = self.preference_backward(micro)
        else:
            step_tokens, extra = self.supervised_backward(micro), {}
        if self.group is not None and not self.sharded:  # FSDP sums the gradients itself
            self.group.sum_grads(self.params)  # the ranks' shares of the step add up to one device's
        max_norm = self.cfg.max_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm) if max_norm else None
        if grad_norm is not None and self.sharded:
            from worker.sharding import full_of

            grad_norm = full_of(grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self.step_metrics(epoch, lr, grad_norm, step_tokens / max(1e-9, time.monotonic() - t0))
        metrics.update(extra)
        return metrics

    def supervised_backward(self, micro: list[list[int]]) -> int:
        """Gradients of the next-token loss over the step's micro-batches; returns the tokens seen."""
        n_label = sum(self.examples[i].trained_tokens for batch in micro for i in batch)
        step_loss, step_tokens = 0.0, 0
        for indices in micro:
            weight = 1.0
            if self.group is not None:
                share = self.group.shard(indices)
                if not share and not self.sharded:
                    continue
                # FSDP: a rank with no example still runs the forward and backward (their collectives), on a
                # stand-in example whose loss counts for nothing.
                indices, weight = (share, 1.0) if share else (indices[:1], 0.0)
            batch = make_batch([self.examples[i] for i in indices], self.pad_id, self.device.device,
                               self.cfg.packing, padding_free=self.padding_free)
            loss_sum, _ = summed_token_loss(self.model, batch)
            loss_sum = loss_sum * weight
            # Normalise by the trained tokens of the whole accumulated step, not per micro-batch.
            (loss_sum / max(1, n_label)).backward()
            step_loss += loss_sum.item()
            step_tokens += int(batch.tokens * weight)
        if self.group is not None:
            step_loss, step_tokens = self.group.sum([step_loss, step_tokens])
        self.loss_value = step_loss / max(1, n_label)
        return step_tokens

    def preference_backward(self, micro: list[list[int]]) -> tuple[float, dict[str, float]]:
        """Gradients of the DPO / ORPO loss over the step's micro-batches; returns the tokens seen (both sides,
        DPO's reference pass counted as worker.estimate.work_per_token says) and the step's reward margin and
        accuracy. One device only (worker.config refuses devices > 1 for pairs)."""
        cfg = self.cfg
        self.loss_value, tokens, rewards = preference_step(self.model, self.examples, micro, self.pad_id,
                                                           self.device.device, cfg.method, cfg.beta,
                                                           self.reference.get("train"))
        return tokens * work_per_token(cfg), rewards

    def step_metrics(self, epoch: int, lr: float, grad_norm, tokens_per_s: float) -> dict[str, Any]:
        elapsed = time.monotonic() - self.loop_started
        done_here = self.step - self.start_step
        metrics: dict[str, Any] = {
            "loss": self.loss_value,
            "lr": lr,
            "epoch": epoch + ((self.step - 1) % self.per_epoch + 1) / self.per_epoch,
            "total_steps": self.total_steps,
            "tokens_per_s": tokens_per_s,
            "eta_s": elapsed / done_here * (self.total_steps - self.step),
        }
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        mfu = model_flops_utilisation(self.flops_per_token, tokens_per_s, self.peak_flops)
        if mfu is not None:
            metrics["mfu"] = mfu
        metrics["memory_mb"] = peak_memory_mb(self.device)
        return metrics

    def evaluate(self, metrics: dict[str, Any]) -> None:
        """Eval loss every `eval_interval` steps and at the last; a new best is marked (and kept with keep_best)."""
        if not (self.eval_examples or self.eval_everywhere) or (self.step % self.every != 0 and self.step != self.total_steps):
            return
        failpoint("evaluate")
        if self.cfg.is_preference:
            scores = preference_eval(self.model, self.eval_examples, self.cfg.batch_size, self.pad_id,
                                     self.device.device, self.cfg.method, self.cfg.beta, self.reference.get("eval"))
            metrics.update({f"eval_{key}": value for key, value in scores.items()})
        elif self.group is None:
            metrics["eval_loss"] = mean_token_loss(self.model, self.eval_examples, self.cfg.batch_size, self.pad_id,
                                                   self.device.device)
        else:
            total, count = self.group.sum(summed_eval_loss(self.model, self.eval_examples, self.cfg.batch_size,
                                                           self.pad_id, self.device.device, **self.eval_fill))
            metrics["eval_loss"] = total / max(1, count)
        if self.best.update(self.step, metrics["eval_loss"]):
            metrics["best"] = True
            if self.cfg.keep_best:
                self.write_adapter(self.best_dir)

    def write_adapter(self, folder: Path, *, tokenizer=None, init_dir: Path | None = None) -> None:
        """Rank 0 writes the adapter; sharded, every rank first gives its shards (gathered whole)."""
        state = None
        if self.sharded:
            from worker.sharding import full_adapter_state

            state = full_adapter_state(self.model)
        if self.main:
            self.guard()
            save_adapter(self.model, folder, tokenizer=tokenizer, init_dir=init_dir, state_dict=state)

    # --- save and the end-of-job evaluation ----------------------------------------------------

    def save(self) -> int:
        """Write the final adapter and tokenizer (the best step's adapter with keep_best); returns its step."""
        best = self.best
        kept_step = self.step
        use_best = (self.cfg.keep_best and best.best_step is not None and best.best_step != self.step
                    and self.best_dir.is_dir())
        if self.sharded:  # rank 0's answer: the others may look before its last write of best_dir is done
            use_best = bool(self.group.broadcast_int(int(use_best)))
        if use_best:
            load_adapter_weights(self.model, self.best_dir)
            kept_step = best.best_step
            self.reporter.event("best", f"kept the adapter from step {kept_step} (lowest eval loss "
                                        f"{best.best_loss:.4f}), not the last step {self.step}")
        if self.main:
            self.guard()
            failpoint("save")
        self.write_adapter(self.adapter_dir, tokenizer=self.tokenizer, init_dir=self.init_dir)
        self.reporter.event("saved", "adapter saved" + (" (PiSSA converted to plain LoRA for the original base)"
                                                        if self.init_dir else ""))
        return kept_step

    def final_evaluation(self) -> None:
        """Base vs adapted on the validation split, written to evaluation.json (when asked for). Sharded, every
        rank runs the same evaluation (the same forwards, so FSDP's gathers match) and rank 0 writes it."""
        spec = self.spec
        if self.init_dir is not None:
            # PiSSA rewrote the base in memory; evaluate what users get: the original base + the converted adapter.
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(load_base_model(spec.base_model_path, self.device),
                                                   str(self.adapter_dir))
        self.model.eval()
        if spec.eval_dataset_path and self.cfg.final_eval:
            self.reporter.event("evaluate", "comparing base and adapted model on the validation split")
            started = time.monotonic()
            held_out = read_normalized_jsonl(spec.eval_dataset_path)
            if self.cfg.is_preference:
                evaluation = evaluate_preferences(self.model, self.tokenizer, held_out, cfg=self.cfg,
                                                  device=self.device.device, ref_table=self.reference.get("eval"))
            else:
                evaluation = evaluate_adapter(self.model, self.tokenizer, held_out,
                                              max_seq_length=self.cfg.max_seq_length, device=self.device.device,
                                              between_batches=self.poll_stop)
            if self.main:
                self.guard()
                write_text_atomic(self.out / "evaluation.json", json.dumps(evaluation, indent=1))
                self.reporter.event("evaluate", evaluation_cost(time.monotonic() - started,
                                                                time.monotonic() - self.started))

    # --- results --------------------------------------------------------------------------------

    def stopped(self, request: str) -> TrainResult:
        return TrainResult("cancelled" if request == "cancel" else "paused", self.step, self.total_steps,
                           self.loss_value, None, self.targets, self.trainable, self.total_params,
                           time.monotonic() - self.started,
                           precision=self.device.precision if self.device is not None else "")

    def succeeded(self, kept_step: int) -> TrainResult:
        best = self.best
        return TrainResult("succeeded", self.step, self.total_steps, self.loss_value, str(self.adapter_dir),
                           self.targets, self.trainable, self.total_params, time.monotonic() - self.started,
                           kept_step if best.best_step is not None else None, best.best_loss, self.stopped_early,
                           self.model, self.device.precision)


def evaluation_cost(seconds: float, run_seconds: float) -> str:
    """The end-of-job evaluation's time and its share of the run, for the job's log."""
    share = 100 * seconds / run_seconds if run_seconds > 0 else 100.0
    return f"evaluation took {seconds:.1f} s, {share:.0f}% of the job"


def train(spec: TrainSpec, reporter: Reporter, should_stop: StopCheck = never_stop, *,
          group: RankGroup | None = None, warm: WarmBases | None = None) -> TrainResult:
    """Train a LoRA adapter as `spec` says; resumes from the newest checkpoint in output_dir.

    With `group`, this process is one rank of a data-parallel run (see `worker.distributed`); only
    rank 0's result carries the saved adapter. With `warm`, the base is borrowed from (and given back
    to) the bases kept loaded between jobs, so the result carries no model.
    """
    run = TrainingRun(spec, reporter, should_stop, group, warm)
    try:
        result = run_phases(run)
    finally:
        if run.release_base():  # the base went back to `warm`, stripped of this job's LoRA layers
            run.model = None
    if warm is not None:
        result.model = None
    return result


def run_phases(run: TrainingRun) -> TrainResult:
    import torch

    try:
        run.setup()
    except StopRequested as stop:
        run.reporter.event(stop.request, "stopped during setup, before step 1")
        return run.stopped(stop.request)
    run.resume()
    try:
        request = run.loop()
    except (MemoryError, torch.cuda.OutOfMemoryError) as exc:
        raise TrainingError(ADVICE_OOM, code=OUT_OF_MEMORY) from exc
    if request is not None:
        return run.stopped(request)
    if not run.main and not run.sharded:
        return TrainResult("succeeded", run.step, run.total_steps, run.loss_value)
    kept_step = run.save()
    try:
        run.final_evaluation()
    except StopRequested as stop:
        run.reporter.event(stop.request, "stopped during the end-of-job evaluation; the adapter is saved")
        return run.stopped(stop.request)
    if not run.main:
        return TrainResult("succeeded", run.step, run.total_steps, run.loss_value)
    return run.succeeded(kept_step)
