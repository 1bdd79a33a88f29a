"""The training entry point: `train(spec, reporter, should_stop) -> TrainResult`.

A recipe in named phases, like torchtune's: setup (seeds, device, tokenizer, data, model,
optimizer), resume from the newest readable checkpoint, the loop (one optimizer step per
iteration, the stop flag checked before each, evaluation and checkpoints between steps), save
(adapter + tokenizer, atomically), then the end-of-job evaluation. Every write into the output
folder comes right after the reporter's `guard()`, which raises WorkLost once the job is not ours.

The recipe reads as if it ran on one device. Where one job on several devices differs (which share of a batch
this rank trains on, summing gradients and losses across ranks, agreeing on stop, gathering the adapter to
save, which rank writes) it asks its device strategy (`worker.devices`): single device, data parallel or FSDP.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from worker.batching import MicroBatchStream, make_batch
from worker.checkpoint import (
    load_adapter_weights,
    prune_checkpoints,
    recover_leftovers,
    save_adapter,
    write_text_atomic,
)
from worker.config import TrainSpec
from worker.data.examples import Example
from worker.data.normalized import read_normalized_jsonl
from worker.data.tokenization import TokenizedExample, TokenizedPair, tokenize_examples, tokenize_pairs
from worker.devices import EvalShare, device_strategy
from worker.errors import TrainingError
from worker.estimate import reinforcement_step_work, work_per_token
from worker.evaluation import evaluate_adapter, evaluate_preferences
from worker.failpoints import failpoint
from worker.kernels import liger_problem, padding_free
from worker.loss import pair_logps, preference_eval, preference_step, summed_eval_loss, summed_token_loss
from worker.memory_advice import ADVICE_OOM, OUT_OF_MEMORY
from worker.modeling import build_peft_model, load_base_model, load_tokenizer, train_device
from worker.ranks import RankGroup
from worker.reporting import Reporter, StopCheck, never_stop, precision_hook
from worker.resume import Checkpointing
from worker.rft import RewardLearner, TokenizedPrompt, reward_evaluation, reward_learner, tokenize_prompts
from worker.run_state import RunData, StopRequested, TrainResult, build_optimization, evaluation_cost
from worker.schedule import eval_interval, plan_steps
from worker.warm import WarmBases

log = logging.getLogger(__name__)


STOP_POLL_S = 1.0  # outside the loop (tokenizing, loading, evaluating) the stop flag is read at most this often
TOKENIZE_CHUNK = 256  # examples tokenized between two looks at the stop flag


class TrainingRun(Checkpointing):
    """One job's phases over its state (`worker.run_state.RunState`); `train` calls them in order."""

    def poll_stop(self) -> None:
        """Raise StopRequested when a cancel or pause is asked for, looking at most once every STOP_POLL_S: for
        long work outside the loop, so a cancel during tokenizing, loading or evaluating acts within seconds.
        Several ranks agree on stopping only in the loop (one rank alone must not leave a collective)."""
        if not self.devices.polls_stop:
            return
        now = time.monotonic()
        if now - self.last_poll < STOP_POLL_S:
            return
        self.last_poll = now
        request = self.should_stop()
        if request in ("cancel", "pause"):
            raise StopRequested(request)

    def write(self, action: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """Run a write into the output folder on the rank that writes, right after the guard."""
        if self.devices.writes:
            self.guard()
            action(*args, **kwargs)

    # --- setup ----------------------------------------------------------------------------

    def setup(self) -> None:
        """Seeds, device, data, model and optimizer, in this order (the seeds fix the LoRA init)."""
        import torch

        random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        self.device = device = train_device(self.spec.device, self.cfg)
        problem = liger_problem(self.cfg, device)
        if problem:
            raise TrainingError(problem)
        self.padding_free = padding_free(self.cfg, device)
        self.write(self.recover_output)
        self.setup_data()
        self.setup_model()
        self.opt = build_optimization(self.model, self.cfg, device, self.total_steps)
        if self.cfg.is_reinforcement:
            self.setup_graders()

    def recover_output(self) -> None:
        """Put back or clear what a crash in the middle of an atomic write left in the output folders."""
        recover_leftovers(self.folders.out)
        recover_leftovers(self.folders.checkpoints)

    def setup_data(self) -> None:
        """Tokenizer, tokenized train and eval examples (or preference pairs), and the step plan."""
        spec, cfg = self.spec, self.cfg
        self.reporter.event("setup", f"loading tokenizer and data on {self.train_dev.device}")
        tokenizer = load_tokenizer(spec.base_model_path)
        examples = self.tokenize(tokenizer, read_normalized_jsonl(spec.dataset_path))
        if not examples:
            raise TrainingError("no example has an assistant token left after truncation; raise max_seq_length")
        per_epoch, total_steps = plan_steps(len(examples), cfg)
        # Kept before the eval set is tokenized, so a stop during it reports the planned steps.
        self.data = data = RunData(
            tokenizer=tokenizer,
            examples=examples,
            stream=MicroBatchStream(examples, cfg, per_epoch),
            per_epoch=per_epoch,
            total_steps=total_steps,
            eval_every=eval_interval(cfg, total_steps),
            eval=EvalShare(),
        )
        if spec.eval_dataset_path:  # each rank evaluates its share
            data.eval = self.devices.eval_share(
                self.tokenize(tokenizer, read_normalized_jsonl(spec.eval_dataset_path)), cfg.batch_size
            )

    def tokenize(self, tokenizer: Any, examples: list[Example]) -> list[Any]:
        """Examples for supervised tuning, pairs for DPO / ORPO, prompts for reinforcement; a dataset of another
        kind is refused."""
        cfg = self.cfg
        prompts = sum(1 for e in examples if e.is_prompt)
        if cfg.is_reinforcement:
            if prompts < len(examples):
                raise TrainingError(
                    "reinforcement trains on prompts to reward (messages ending with a user message) and "
                    f"{len(examples) - prompts} of the {len(examples)} examples are not prompts"
                )
            self.poll_stop()
            return tokenize_prompts(tokenizer, examples, max(1, cfg.max_seq_length - cfg.max_answer_tokens))
        if prompts:
            raise TrainingError(
                f"the dataset holds {prompts} prompts without answers; they are for the reinforcement method, "
                "which learns from graders' scores"
            )
        pairs = sum(1 for e in examples if e.is_preference)
        if cfg.is_preference and pairs < len(examples):
            raise TrainingError(
                f"method {cfg.method} trains on preference pairs (prompt, chosen, rejected) and "
                f"{len(examples) - pairs} of the {len(examples)} examples are not pairs"
            )
        if not cfg.is_preference and pairs:
            raise TrainingError(
                f"the dataset holds {pairs} preference pairs; supervised tuning needs examples "
                "with answers: pick method dpo or orpo"
            )
        tokenize = tokenize_pairs if cfg.is_preference else tokenize_examples
        out: list[Any] = []
        for start in range(0, len(examples), TOKENIZE_CHUNK):
            self.poll_stop()
            out.extend(tokenize(tokenizer, examples[start : start + TOKENIZE_CHUNK], cfg.max_seq_length))
        return out

    @property
    def rewards(self) -> RewardLearner:
        """Reinforcement's learner (set up with the graders)."""
        if self.learner is None:
            raise RuntimeError("the graders are not set up: this run is not a reinforcement run")
        return self.learner

    def setup_graders(self) -> None:
        """Reinforcement: the grader (its python parts in their sandboxes) and the GRPO steps over it."""
        own = self.model if self.devices.world == 1 else None  # a judge that is the base alone: the model, adapter off
        self.learner = reward_learner(self.spec, self.run_data.tokenizer, self.train_dev.device, own)
        if self.learner.judge is not None:  # loaded now, so a stop acts within seconds once answers are judged
            self.reporter.event("setup", "loading the grader's judge models")
            self.learner.judge.load(self.poll_stop)
        name = self.learner.scorer.grader.name
        self.reporter.event("setup", f"reinforcement: {self.cfg.group_size} answers per prompt, scored by '{name}'")

    def setup_model(self) -> None:
        """The frozen base wrapped with LoRA; with PiSSA, the initial adapter is kept for the conversion."""
        cfg = self.cfg
        self.reporter.event(
            "setup",
            f"precision {self.train_dev.precision}: the frozen base computes in "
            f"{self.train_dev.precision}, LoRA weights and optimizer state are fp32",
        )
        if self.devices.writes:
            precision_hook(self.reporter)(self.train_dev.precision)
        self.poll_stop()
        self.base = self.load_base()
        self.model, self.targets = build_peft_model(self.base, cfg)
        self.wrapped = self.model
        self.poll_stop()
        if not self.train_dev.is_cuda:  # CUDA's fused dropout is already fast
            from worker.dropout import use_fast_dropout

            use_fast_dropout(self.model)
        from worker.lora16 import compute_lora_in_bf16

        compute_lora_in_bf16(self.model)  # a bf16 base: the LoRA branches compute in bf16 too, weights stay fp32
        if self.spec.start_adapter_dir:
            self.start_from_adapter(Path(self.spec.start_adapter_dir))
        self.trainable, self.total_params = self.model.get_nb_trainable_parameters()
        self.setup_mfu()
        if cfg.liger:
            self.reporter.event(
                "setup",
                "Liger kernels: RMSNorm and SwiGLU where the architecture has them, and the fused linear cross-entropy",
            )
        if self.padding_free:
            self.reporter.event("setup", "packing without padding: flash-attention's variable-length kernels")
        self.reporter.event(
            "setup",
            f"LoRA on {', '.join(self.targets)}: {self.trainable:,} trainable of {self.total_params:,} parameters",
        )
        self.devices.prepare(self.model, self.reporter)
        if cfg.init_lora_weights == "pissa":
            # The adapter as initialised, before any step: needed to convert the result to plain LoRA.
            self.init_dir = self.folders.initial
            if not (self.init_dir / "adapter_model.safetensors").is_file():
                self.write(save_adapter, self.model, self.init_dir)

    def setup_mfu(self) -> None:
        """FLOPs per trained token (worker.mfu's convention) and the device's peak: MFU is logged when known."""
        from worker.mfu import device_peak_flops, flops_per_token_of

        lengths = [e.length for e in self.run_data.examples] or [self.cfg.max_seq_length]
        self.flops_per_token = flops_per_token_of(
            self.model, self.trainable, self.total_params, sum(lengths) / len(lengths)
        )
        self.peak_flops = None
        if self.train_dev.is_cuda:
            import torch

            name = torch.cuda.get_device_name()  # this process's GPU (each rank has set its own)
            peak = device_peak_flops(name, self.train_dev.precision)
            self.peak_flops = peak * self.devices.world if peak else peak  # tokens/s is summed over the ranks

    def load_base(self) -> Any:
        """The frozen base: the one kept loaded from an earlier job on it (warm start), else loaded now."""

        def announce(warm: bool) -> None:
            if warm:
                self.reporter.event("setup", "base model already loaded (warm start)")
            else:
                self.reporter.event("setup", "loading base model" + (" in 4-bit NF4 (QLoRA)" if self.cfg.qlora else ""))
            failpoint("setup")

        if self.warm is None:
            announce(False)
            return load_base_model(self.spec.base_model_path, self.train_dev, self.cfg)
        return self.warm.acquire(self.spec.base_model_path, self.train_dev, self.cfg, announce=announce)[0]

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
            raise TrainingError(
                f"the adapter to start from has rank {saved.get('r')} on "
                f"{sorted(saved.get('target_modules') or [])}; this job needs rank {cfg.rank} on "
                f"{sorted(self.targets)}"
            )
        load_adapter_weights(self.model, folder)
        self.reporter.event(
            "setup",
            f"starting from the adapter of job {cfg.start_from}"
            + (" (also DPO's reference)" if cfg.method == "dpo" else ""),
        )
        if cfg.is_reinforcement:  # the reference is the start: its adapter weights, kept aside (megabytes)
            self.reference["adapter"] = {
                name: param.detach().clone() for name, param in self.model.named_parameters() if param.requires_grad
            }
        if cfg.method == "dpo":
            for name, pairs in (("train", self.run_data.examples), ("eval", self.run_data.eval.examples)):
                self.reference[name] = pair_logps(
                    self.model,
                    cast(list[TokenizedPair], pairs),
                    cfg.batch_size,
                    self.run_data.pad_id,
                    self.train_dev.device,
                )

    # --- loop -------------------------------------------------------------------------------

    def loop(self) -> str | None:
        """Train up to the last step; returns "cancel" or "pause" when asked to stop first."""
        self.model.train()
        self.loop_started = time.monotonic()
        while self.step < self.total_steps:
            request = self.devices.agree_stop(self.should_stop)
            if request in ("cancel", "pause"):
                return self.stop_between_steps(request, f"stopped before step {self.step + 1}")
            try:
                metrics = self.train_step()
            except StopRequested as stop:  # reinforcement looks during sampling: the step is undone
                self.optim.optimizer.zero_grad(set_to_none=True)
                self.step -= 1
                return self.stop_between_steps(stop.request, f"stopped during step {self.step + 1}; it is redone")
            try:
                self.evaluate(metrics)
            except StopRequested as stop:  # the step is done: reported (without its evaluation) and kept
                self.reporter.log(self.step, metrics)
                return self.stop_between_steps(stop.request, f"stopped during the evaluation after step {self.step}")
            for warning in self.learner.warnings(self.step, metrics) if self.learner and self.devices.writes else []:
                self.reporter.event("warning", warning)
            self.reporter.log(self.step, metrics)
            if self.best.should_stop and self.step < self.total_steps:
                self.reporter.event(
                    "early_stop",
                    f"stopped at step {self.step}: no eval-loss improvement in "
                    f"{self.best.bad_evals} evaluations (best "
                    f"{self.best.best_loss:.4f} at step {self.best.best_step})",
                )
                self.stopped_early = True
                return None
            if self.step % self.cfg.save_every == 0 and self.step < self.total_steps:
                self.checkpoint()
                self.write(prune_checkpoints, self.folders.checkpoints)
        return None

    def stop_between_steps(self, request: str, message: str) -> str:
        """End the loop for a cancel or pause; a pause keeps a checkpoint of the last finished step."""
        if request == "pause" and self.step > self.start_step:
            self.checkpoint()
        self.reporter.event(request, message)
        return request

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over its accumulated micro-batches; returns the step's metrics."""
        self.step += 1
        t0 = time.monotonic()
        epoch, micro = self.run_data.stream.for_step(self.step)
        step_tokens: float
        extra: dict[str, Any]
        if self.cfg.is_reinforcement:
            prompts = cast(list[TokenizedPrompt], self.run_data.examples)
            outcome = self.rewards.step(self.model, prompts, micro, self.poll_stop, self.reference.get("adapter"))
            self.loss_value, extra = outcome.loss, dict(outcome.metrics)
            asked = self.cfg.group_size * sum(prompts[i].length for batch in micro for i in batch)
            # tokens/s in the other methods' units, sampling and the reference pass counted (as the estimate's)
            step_tokens = reinforcement_step_work(self.cfg, asked, float(outcome.tokens), str(self.device))
        elif self.cfg.is_preference:
            step_tokens, extra = self.preference_backward(micro)
        else:
            step_tokens, extra = self.supervised_backward(micro), {}
        opt = self.optim
        self.devices.reduce_grads(opt.params)
        grad_norm = self.devices.clip_grad_norm(opt.params, self.cfg.max_grad_norm)
        lr = opt.scheduler.get_last_lr()[0]
        opt.optimizer.step()
        opt.scheduler.step()
        opt.optimizer.zero_grad(set_to_none=True)
        metrics = self.step_metrics(epoch, lr, grad_norm, step_tokens / max(1e-9, time.monotonic() - t0))
        metrics.update(extra)
        return metrics

    def supervised_backward(self, micro: list[list[int]]) -> float:
        """Gradients of the next-token loss over the step's micro-batches (this rank's share of each); returns
        the tokens seen."""
        examples = cast(list[TokenizedExample], self.run_data.examples)
        n_label = sum(examples[i].trained_tokens for batch in micro for i in batch)
        step_loss = 0.0
        step_tokens: float = 0  # an int on one device; the sum over ranks may be a float
        for indices in micro:
            share = self.devices.share(indices)
            if share is None:
                continue
            indices, weight = share
            batch = make_batch(
                [examples[i] for i in indices],
                self.run_data.pad_id,
                self.train_dev.device,
                self.cfg.packing,
                padding_free=self.padding_free,
            )
            loss_sum, _ = summed_token_loss(self.model, batch)
            loss_sum = loss_sum * weight
            # Normalise by the trained tokens of the whole accumulated step, not per micro-batch.
            (loss_sum / max(1, n_label)).backward()  # type: ignore[no-untyped-call]
            step_loss += loss_sum.item()
            step_tokens += int(batch.tokens * weight)
        step_loss, step_tokens = self.devices.sum([step_loss, step_tokens])
        self.loss_value = step_loss / max(1, n_label)
        return step_tokens

    def preference_backward(self, micro: list[list[int]]) -> tuple[float, dict[str, float]]:
        """Gradients of the DPO / ORPO loss over the step's micro-batches; returns the tokens seen (both sides,
        DPO's reference pass counted as worker.estimate.work_per_token says) and the step's reward margin and
        accuracy. One device only (worker.config refuses devices > 1 for pairs)."""
        cfg = self.cfg
        pairs = cast(list[TokenizedPair], self.run_data.examples)
        self.loss_value, tokens, rewards = preference_step(
            self.model,
            pairs,
            micro,
            self.run_data.pad_id,
            self.train_dev.device,
            cfg.method,
            cfg.beta,
            self.reference.get("train"),
        )
        return tokens * work_per_token(cfg), rewards

    def evaluate(self, metrics: dict[str, Any]) -> None:
        """Eval loss every `eval_interval` steps and at the last; a new best is marked (and kept with keep_best)."""
        data, cfg = self.run_data, self.cfg
        if not data.eval.runs or (self.step % data.eval_every != 0 and self.step != self.total_steps):
            return
        failpoint("evaluate")
        if cfg.is_reinforcement:  # higher is better: the best is the lowest negative reward
            prompts = cast(list[TokenizedPrompt], data.eval.examples)
            metrics.update(self.rewards.validation_reward(self.model, prompts, self.poll_stop))
            if self.best.update(self.step, -metrics["eval_reward"]):
                metrics["best"] = True
                if cfg.keep_best:
                    self.write_adapter(self.folders.best)
            return
        if cfg.is_preference:
            scores = preference_eval(
                self.model,
                data.eval.examples,
                cfg.batch_size,
                data.pad_id,
                self.train_dev.device,
                cfg.method,
                cfg.beta,
                self.reference.get("eval"),
            )
            metrics.update({f"eval_{key}": value for key, value in scores.items()})
        else:
            total, count = self.devices.sum(
                summed_eval_loss(
                    self.model, data.eval.examples, cfg.batch_size, data.pad_id, self.train_dev.device, **data.eval.fill
                )
            )
            metrics["eval_loss"] = total / max(1, count)
        if self.best.update(self.step, metrics["eval_loss"]):
            metrics["best"] = True
            if cfg.keep_best:
                self.write_adapter(self.folders.best)

    def write_adapter(self, folder: Path, *, tokenizer: Any = None, init_dir: Path | None = None) -> None:
        """Rank 0 writes the adapter; sharded, every rank first gives its shards (gathered whole)."""
        state = self.devices.adapter_state(self.model)
        self.write(save_adapter, self.model, folder, tokenizer=tokenizer, init_dir=init_dir, state_dict=state)

    # --- save and the end-of-job evaluation ----------------------------------------------------

    def save(self) -> int | None:
        """Write the final adapter and tokenizer (the best step's adapter with keep_best); returns its step."""
        best, best_dir = self.best, self.folders.best
        kept_step: int | None = self.step
        use_best = (
            self.cfg.keep_best and best.best_step is not None and best.best_step != self.step and best_dir.is_dir()
        )
        # Rank 0's answer: the others may look before its last write of best_dir is done.
        if self.devices.agree_on_save(use_best):
            load_adapter_weights(self.model, best_dir)
            kept_step = best.best_step
            measure = (
                f"highest validation reward {-(best.best_loss or 0.0):.4f}"
                if self.cfg.is_reinforcement
                else f"lowest eval loss {best.best_loss:.4f}"
            )
            self.reporter.event(
                "best", f"kept the adapter from step {kept_step} ({measure}), not the last step {self.step}"
            )
        if self.devices.writes:
            self.guard()
            failpoint("save")
        self.write_adapter(self.folders.adapter, tokenizer=self.run_data.tokenizer, init_dir=self.init_dir)
        self.reporter.event(
            "saved",
            "adapter saved" + (" (PiSSA converted to plain LoRA for the original base)" if self.init_dir else ""),
        )
        return kept_step

    def final_evaluation(self) -> None:
        """Base vs adapted on the validation split, written to evaluation.json (when asked for). Sharded, every
        rank runs the same evaluation (the same forwards, so FSDP's gathers match) and rank 0 writes it."""
        spec, cfg = self.spec, self.cfg
        if self.init_dir is not None:
            # PiSSA rewrote the base in memory; evaluate what users get: the original base + the converted adapter.
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(
                load_base_model(spec.base_model_path, self.train_dev), str(self.folders.adapter)
            )
        self.model.eval()
        if not (spec.eval_dataset_path and cfg.final_eval):
            return
        self.reporter.event("evaluate", "comparing base and adapted model on the validation split")
        started = time.monotonic()
        if cfg.is_reinforcement:  # its held-out prompts were tokenized at setup (one device: all of them)
            prompts = cast(list[TokenizedPrompt], self.run_data.eval.examples)
            evaluation = reward_evaluation(
                self.rewards, self.model, prompts, self.poll_stop, self.reference.get("adapter")
            )
        elif cfg.is_preference:
            evaluation = evaluate_preferences(
                self.model,
                self.run_data.tokenizer,
                read_normalized_jsonl(spec.eval_dataset_path),
                cfg=cfg,
                device=self.train_dev.device,
                ref_table=self.reference.get("eval"),
            )
        else:
            evaluation = evaluate_adapter(
                self.model,
                self.run_data.tokenizer,
                read_normalized_jsonl(spec.eval_dataset_path),
                max_seq_length=cfg.max_seq_length,
                device=self.train_dev.device,
                stop_check=self.poll_stop,
            )
        if self.devices.writes:
            self.guard()
            write_text_atomic(self.folders.out / "evaluation.json", json.dumps(evaluation, indent=1))
            self.reporter.event(
                "evaluate", evaluation_cost(time.monotonic() - started, time.monotonic() - self.started)
            )


def train(
    spec: TrainSpec,
    reporter: Reporter,
    should_stop: StopCheck = never_stop,
    *,
    group: RankGroup | None = None,
    warm: WarmBases | None = None,
) -> TrainResult:
    """Train a LoRA adapter as `spec` says; resumes from the newest checkpoint in output_dir.

    With `group`, this process is one rank of a run on several devices (see `worker.distributed` and
    `worker.devices`); only rank 0's result carries the saved adapter. With `warm`, the base is borrowed from
    (and given back to) the bases kept loaded between jobs, so the result carries no model.
    """
    run = TrainingRun(spec, reporter, should_stop, device_strategy(group, spec.config.sharding), warm)
    try:
        result = run_phases(run)
    finally:
        if run.learner is not None:
            run.learner.close()
        if run.release_base():  # the base went back to `warm`, stripped of this job's LoRA layers
            run.model = None
    if warm is not None:
        result.model = None
    return result


def run_phases(run: TrainingRun) -> TrainResult:
    """Setup, resume, the loop, save and the end-of-job evaluation; a stop request ends the run where it comes."""
    import torch

    try:
        run.setup()
    except StopRequested as stop:
        run.reporter.event(stop.request, "stopped during setup, before step 1")
        return run.stopped(stop.request)
    run.resume()
    try:
        request = run.loop()
        if request is not None:
            return run.stopped(request)
        if not run.devices.saves:  # data parallel: rank 0 saves and evaluates alone
            return run.succeeded(run.step)
        kept_step = run.save()
        try:
            run.final_evaluation()  # reinforcement samples here too: it may run out of memory like a step
        except StopRequested as stop:
            run.reporter.event(stop.request, "stopped during the end-of-job evaluation; the adapter is saved")
            return run.stopped(stop.request)
    except (MemoryError, torch.cuda.OutOfMemoryError) as exc:
        raise TrainingError(ADVICE_OOM, code=OUT_OF_MEMORY) from exc
    return run.succeeded(kept_step)
