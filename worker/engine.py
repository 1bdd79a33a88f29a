"""The training entry point: `train(spec, reporter, should_stop) -> TrainResult`.

Phases, like a torchtune recipe: setup (device, tokenizer, data, model, optimizer), resume from
the newest checkpoint, the loop (one optimizer step per iteration, stop flag checked before
each), save (adapter + tokenizer, atomically), result.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.checkpoint import (atomic_dir, latest_checkpoint, load_adapter_weights, load_checkpoint,
                               prune_checkpoints, save_checkpoint)
from worker.config import TrainConfig, TrainSpec
from worker.data import IGNORE_INDEX, TokenizedExample, read_normalized_jsonl, tokenize_examples
from worker.modeling import build_peft_model, choose_device, load_base_model, load_tokenizer
from worker.reporting import Reporter, StopCheck, never_stop

log = logging.getLogger(__name__)

ADVICE_OOM = (
    "Out of memory. Try, in this order: a smaller batch size with more gradient accumulation "
    "(same effective batch), a shorter max sequence length, QLoRA (4-bit base), "
    "gradient checkpointing, or a lower rank."
)


class TrainingError(RuntimeError):
    """Training cannot go on; the message is plain advice for the user."""


def oom_suggestion(cfg: TrainConfig) -> dict[str, Any]:
    """Settings that need less memory for the same effective batch: the one-click retry after an OOM."""
    change: dict[str, Any] = {}
    if cfg.batch_size > 1:
        change["batch_size"] = max(1, cfg.batch_size // 2)
        change["grad_accum"] = cfg.grad_accum * (cfg.batch_size // change["batch_size"])
    elif cfg.max_seq_length > 128:
        change["max_seq_length"] = max(128, cfg.max_seq_length // 2)
    if not cfg.gradient_checkpointing:
        change["gradient_checkpointing"] = True
    if not change and not cfg.qlora:
        change["qlora"] = True
    return change


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


def plan_steps(n_examples: int, cfg: TrainConfig) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps)."""
    micro_per_epoch = math.ceil(n_examples / cfg.batch_size)
    per_epoch = max(1, math.ceil(micro_per_epoch / cfg.grad_accum))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    return per_epoch, total


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
        chunk = sorted(order[start:start + window], key=lambda i: -lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


class MicroBatchStream:
    """Micro-batches in a fixed order across epochs, addressable by optimizer step."""

    def __init__(self, examples: list[TokenizedExample], cfg: TrainConfig, per_epoch: int):
        self.examples = examples
        self.cfg = cfg
        self.per_epoch = per_epoch
        self.lengths = [len(e.input_ids) for e in examples]
        self._cache: dict[int, list[list[int]]] = {}

    def _epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._cache:
            self._cache = {epoch: epoch_batches(self.lengths, self.cfg.batch_size, self.cfg.seed, epoch)}
        return self._cache[epoch]

    def for_step(self, step: int) -> tuple[int, list[list[int]]]:
        """(epoch, micro-batches) for optimizer step `step` (1-based)."""
        epoch = (step - 1) // self.per_epoch
        within = (step - 1) % self.per_epoch
        batches = self._epoch(epoch)
        acc = self.cfg.grad_accum
        return epoch, batches[within * acc:(within + 1) * acc]


@dataclass
class Batch:
    ids: Any
    labels: Any
    attention_mask: Any  # (rows, width) padding mask, or (1, 1, L, L) block-diagonal causal mask
    position_ids: Any = None
    tokens: int = 0  # real (non-padding) tokens


def collate(examples: list[TokenizedExample], pad_id: int, device) -> Batch:
    """Right-pad a micro-batch to its own longest example."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return Batch(ids.to(device), labels.to(device), mask.to(device), None, int(mask.sum()))


def collate_packed(examples: list[TokenizedExample], device) -> Batch:
    """All examples of a micro-batch in one row, no padding, each attending only to itself.

    Position ids restart at every example and the attention mask is block-diagonal and causal:
    position ids alone would let SDPA attend across examples. The first token of each example
    gets no label, so no example is trained to predict the next example's first token.
    """
    import torch

    ids = torch.tensor([t for e in examples for t in e.input_ids], dtype=torch.long)
    labels = torch.tensor([IGNORE_INDEX if i == 0 else t for e in examples for i, t in enumerate(e.labels)],
                          dtype=torch.long)
    segment = torch.cat([torch.full((len(e.input_ids),), k) for k, e in enumerate(examples)])
    positions = torch.cat([torch.arange(len(e.input_ids)) for e in examples])
    n = ids.numel()
    allowed = (segment[:, None] == segment[None, :]) & torch.ones(n, n, dtype=torch.bool).tril()
    return Batch(ids[None].to(device), labels[None].to(device), allowed[None, None].to(device),
                 positions[None].to(device), n)


def make_batch(examples: list[TokenizedExample], pad_id: int, device, packing: bool) -> Batch:
    return collate_packed(examples, device) if packing else collate(examples, pad_id, device)


def summed_token_loss(peft_model, batch: Batch):
    """Sum of next-token cross-entropy over labelled positions, with logits computed only there.

    The LM head runs on the hidden states of labelled positions alone: for chat data most
    positions are prompt, and the vocabulary projection is the largest matmul in a small model.
    """
    import torch.nn.functional as F

    causal = peft_model.get_base_model()
    backbone = getattr(causal, causal.base_model_prefix, None)
    head = causal.get_output_embeddings()
    targets = batch.labels[:, 1:]
    keep = targets != IGNORE_INDEX
    inputs = {"input_ids": batch.ids, "attention_mask": batch.attention_mask}
    if batch.position_ids is not None:
        inputs["position_ids"] = batch.position_ids
    if backbone is None or head is None or getattr(causal.config, "final_logit_softcapping", None):
        logits = peft_model(**inputs).logits[:, :-1][keep]
    else:
        hidden = backbone(**inputs).last_hidden_state
        logits = head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), int(keep.sum())


def evaluate(model, examples: list[TokenizedExample], batch_size: int, pad_id: int, device) -> float:
    """Mean next-token loss over the trained tokens of `examples` (no dropout, no gradients)."""
    import torch

    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[start:start + batch_size]]
            loss_sum, n = summed_token_loss(model, collate(batch, pad_id, device))
            total += loss_sum.item()
            count += n
    if was_training:
        model.train()
    return total / max(1, count)


def eval_interval(cfg: TrainConfig, total_steps: int) -> int:
    return cfg.eval_every or max(1, total_steps // 10)


@dataclass
class BestTracker:
    """The lowest eval loss so far and early stopping: patience counts evaluations, not steps."""

    patience: int = 0
    threshold: float = 0.0
    best_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0

    def update(self, step: int, eval_loss: float) -> bool:
        """Record an evaluation; True when it is a new best."""
        if self.best_loss is None or eval_loss < self.best_loss - self.threshold:
            self.best_loss, self.best_step, self.bad_evals = eval_loss, step, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_step": self.best_step, "bad_evals": self.bad_evals}

    def restore(self, state: dict[str, Any]) -> None:
        self.best_loss = state.get("best_loss")
        self.best_step = state.get("best_step")
        self.bad_evals = int(state.get("bad_evals", 0))


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


def save_adapter(model, folder: Path, *, tokenizer=None, init_dir: Path | None = None) -> None:
    """Write the adapter (and the tokenizer, if given) atomically.

    With `init_dir` (PiSSA), the adapter is converted against the initial one: PiSSA trains on a
    residual base (W minus its principal components), and the conversion gives a rank-2r LoRA
    that applies to the original, unmodified base.
    """
    with atomic_dir(folder) as tmp:
        if init_dir is not None:
            model.save_pretrained(tmp, path_initial_model_for_weight_conversion=str(init_dir))
        else:
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)


def train(spec: TrainSpec, reporter: Reporter, should_stop: StopCheck = never_stop) -> TrainResult:
    """Train a LoRA adapter as `spec` says; resumes from the newest checkpoint in output_dir."""
    import torch

    cfg = spec.config
    started = time.monotonic()
    out = Path(spec.output_dir)
    ckpt_root = out / "checkpoints"

    # --- setup --------------------------------------------------------------------------
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = choose_device(spec.device)
    reporter.event("setup", f"loading tokenizer and data on {device.device}")
    tokenizer = load_tokenizer(spec.base_model_path)
    examples = tokenize_examples(tokenizer, read_normalized_jsonl(spec.dataset_path), cfg.max_seq_length)
    if not examples:
        raise TrainingError("no example has an assistant token left after truncation; raise max_seq_length")
    per_epoch, total_steps = plan_steps(len(examples), cfg)
    stream = MicroBatchStream(examples, cfg, per_epoch)
    eval_examples: list[TokenizedExample] = []
    if spec.eval_dataset_path:
        eval_examples = tokenize_examples(tokenizer, read_normalized_jsonl(spec.eval_dataset_path), cfg.max_seq_length)
    every = eval_interval(cfg, total_steps)

    reporter.event("setup", "loading base model" + (" in 4-bit NF4 (QLoRA)" if cfg.qlora else ""))
    model = load_base_model(spec.base_model_path, device, cfg)
    model, targets = build_peft_model(model, cfg)
    if not device.is_cuda:  # CUDA's fused dropout is already fast
        from worker.dropout import use_fast_dropout

        use_fast_dropout(model)
    trainable, total_params = model.get_nb_trainable_parameters()
    reporter.event("setup", f"LoRA on {', '.join(targets)}: {trainable:,} trainable of {total_params:,} parameters")
    init_dir = None
    if cfg.init_lora_weights == "pissa":
        # The adapter as initialised, before any step: needed to convert the result to plain LoRA.
        init_dir = out / "initial-adapter"
        if not (init_dir / "adapter_model.safetensors").is_file():
            save_adapter(model, init_dir)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg, device)
    warmup = int(round(cfg.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, total_steps, warmup, cfg.lr_scheduler))

    best = BestTracker(cfg.early_stopping_patience, cfg.early_stopping_threshold)
    best_dir = out / "best-adapter"
    start_step = 0
    ckpt = latest_checkpoint(ckpt_root)
    if ckpt is not None:
        load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
        best.restore(ckpt.state.get("best", {}))
        start_step = ckpt.step
        reporter.event("resume", f"resumed from checkpoint at step {start_step}")

    def checkpoint(at: int) -> None:
        save_checkpoint(ckpt_root, step=at, model=model, optimizer=optimizer, scheduler=scheduler,
                        extra={"total_steps": total_steps, "best": best.state()})

    # --- loop ---------------------------------------------------------------------------
    model.train()
    pad_id = tokenizer.pad_token_id
    loss_value: float | None = None
    tokens_seen = 0
    loop_started = time.monotonic()
    step = start_step
    stopped_early = False
    try:
        while step < total_steps:
            request = should_stop()
            if request in ("cancel", "pause"):
                if request == "pause" and step > start_step:
                    checkpoint(step)
                reporter.event(request, f"stopped before step {step + 1}")
                return TrainResult("cancelled" if request == "cancel" else "paused", step, total_steps,
                                   loss_value, None, targets, trainable, total_params,
                                   time.monotonic() - started)
            step += 1
            t0 = time.monotonic()
            epoch, micro = stream.for_step(step)
            n_label = sum(examples[i].trained_tokens for batch in micro for i in batch)
            step_loss = 0.0
            step_tokens = 0
            for indices in micro:
                batch = make_batch([examples[i] for i in indices], pad_id, device.device, cfg.packing)
                loss_sum, _ = summed_token_loss(model, batch)
                # Normalise by the trained tokens of the whole accumulated step, not per micro-batch.
                (loss_sum / max(1, n_label)).backward()
                step_loss += loss_sum.item()
                step_tokens += batch.tokens
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm else None
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = step_loss / max(1, n_label)
            tokens_seen += step_tokens
            elapsed = time.monotonic() - loop_started
            done_here = step - start_step
            metrics: dict[str, Any] = {
                "loss": loss_value,
                "lr": lr,
                "epoch": epoch + ((step - 1) % per_epoch + 1) / per_epoch,
                "total_steps": total_steps,
                "tokens_per_s": step_tokens / max(1e-9, time.monotonic() - t0),
                "eta_s": elapsed / done_here * (total_steps - step),
            }
            if grad_norm is not None:
                metrics["grad_norm"] = float(grad_norm)
            metrics["memory_mb"] = peak_memory_mb(device)
            if eval_examples and (step % every == 0 or step == total_steps):
                metrics["eval_loss"] = evaluate(model, eval_examples, cfg.batch_size, pad_id, device.device)
                if best.update(step, metrics["eval_loss"]):
                    metrics["best"] = True
                    if cfg.keep_best:
                        save_adapter(model, best_dir)
            reporter.log(step, metrics)
            if best.should_stop and step < total_steps:
                reporter.event("early_stop", f"stopped at step {step}: no eval-loss improvement in "
                                             f"{best.bad_evals} evaluations (best {best.best_loss:.4f} "
                                             f"at step {best.best_step})")
                stopped_early = True
                break
            if step % cfg.save_every == 0 and step < total_steps:
                checkpoint(step)
                prune_checkpoints(ckpt_root)
    except (MemoryError, torch.cuda.OutOfMemoryError) as exc:
        raise TrainingError(ADVICE_OOM) from exc

    # --- save -----------------------------------------------------------------------------
    kept_step = step
    if cfg.keep_best and best.best_step is not None and best.best_step != step and best_dir.is_dir():
        load_adapter_weights(model, best_dir)
        kept_step = best.best_step
        reporter.event("best", f"kept the adapter from step {kept_step} (lowest eval loss "
                               f"{best.best_loss:.4f}), not the last step {step}")
    adapter_dir = out / "adapter"
    save_adapter(model, adapter_dir, tokenizer=tokenizer, init_dir=init_dir)
    reporter.event("saved", "adapter saved" + (" (PiSSA converted to plain LoRA for the original base)"
                                               if init_dir else ""))
    if init_dir is not None:
        # PiSSA rewrote the base in memory; evaluate what users get: the original base + the converted adapter.
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_base_model(spec.base_model_path, device), str(adapter_dir))
    model.eval()
    if spec.eval_dataset_path and cfg.final_eval:
        from worker.evaluation import evaluate_adapter

        reporter.event("evaluate", "comparing base and adapted model on the validation split")
        evaluation = evaluate_adapter(model, tokenizer, read_normalized_jsonl(spec.eval_dataset_path),
                                      max_seq_length=cfg.max_seq_length, device=device.device)
        (out / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
    return TrainResult("succeeded", step, total_steps, loss_value, str(adapter_dir), targets,
                       trainable, total_params, time.monotonic() - started,
                       kept_step if best.best_step is not None else None, best.best_loss, stopped_early, model)
