"""Reinforcement fine-tuning's part of the recipe (method "reinforcement", OpenAI's name): prompts tokenized for
sampling, one GRPO step over the step's prompts (sample G answers each with the adapter in place, grade them,
group advantages, the clipped loss with the KL to the adapter-off model), and the reward on validation prompts.

The engine calls these where the other methods build batches and losses; everything else (schedule, checkpoints,
stop, resume, save) is the same recipe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worker.config import TrainSpec
from worker.data.examples import Example
from worker.data.tokenization import prompt_ids
from worker.errors import TrainingError
from worker.failpoints import failpoint
from worker.graders.scoring import Scorer
from worker.grpo import Samples, answer_logps, group_advantages, grpo_loss, sample_answers
from worker.judges import LocalJudge, OwnModel

if TYPE_CHECKING:
    import torch

AnswerTensors = tuple[
    "torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor"
]  # prompt ids, mask, answer ids, mask
EPSILON = 0.2  # PPO's clip, TRL's default
EVAL_PROMPTS = 64  # validation prompts answered at each evaluation (the first ones; the end of the job takes all)
FLAT_STEPS = 5  # steps in a row without any spread in the scores before the job says so
GRADER_WARN_EVERY = 10  # steps between two warnings that the grader failed on some answers


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt ready to sample from: its ids through the chat template (with the assistant's opening), the row the
    graders read (`item`, with the prompt's messages added under `messages`)."""

    input_ids: list[int]
    item: dict[str, Any]

    @property
    def length(self) -> int:
        return len(self.input_ids)


def tokenize_prompts(tokenizer: Any, examples: Sequence[Example], max_prompt_tokens: int) -> list[TokenizedPrompt]:
    """Each prompt's ids; a prompt longer than `max_prompt_tokens` keeps its end (the question is last)."""
    out = []
    for example in examples:
        ids = prompt_ids(tokenizer, example.messages or [])[-max_prompt_tokens:]
        out.append(TokenizedPrompt(ids, {**(example.item or {}), "messages": example.messages}))
    return out


@dataclass
class StepOutcome:
    """A step's loss value, the answer tokens it trained on, and its metrics for the chart."""

    loss: float
    tokens: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class _Group:
    samples: Samples
    rewards: torch.Tensor
    advantages: torch.Tensor
    parts: dict[str, list[float]]  # each named grader's scores
    failures: int  # answers a grader failed on


def reward_learner(spec: TrainSpec, tokenizer: Any, device: Any, own_model: Any = None) -> RewardLearner:
    """The run's learner over the spec's grader (its python parts in sandboxes with the spec's limits, its judge
    models in this process: `own_model`, the training model, judges as the base when a judge is the base alone)."""
    from worker.graders.python_sandbox import SandboxLimits
    from worker.graders.spec import parse_grader

    if spec.grader is None:
        raise TrainingError("reinforcement needs a grader to score the answers; none was given")
    limits = SandboxLimits(**spec.grader_limits) if spec.grader_limits else None
    judge = None
    if spec.grader_judges:
        own = OwnModel(own_model, tokenizer, device, spec.base_model_path) if own_model is not None else None
        judge = LocalJudge(spec.grader_judges, device=spec.device, own=own)
    scorer = Scorer(parse_grader(spec.grader), judge=judge, limits=limits)
    return RewardLearner(scorer, spec.config, tokenizer, device, judge)


class RewardLearner:
    """GRPO steps and validation rewards for one run; `close()` ends the graders' sandboxes."""

    def __init__(self, scorer: Scorer, cfg: Any, tokenizer: Any, device: Any, judge: LocalJudge | None = None) -> None:
        self.scorer = scorer
        self.judge = judge  # the scorer's judge models, asked for a whole batch of answers at once
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.device = device
        self.last_problem: str | None = None  # what the grader last failed on, in plain words
        self.warned_at: int | None = None  # the step of the last warning that the grader failed
        self.flat_steps = 0  # steps in a row whose answers to each prompt all scored the same

    def close(self) -> None:
        self.scorer.close()
        if self.judge is not None:
            self.judge.close()

    def prefetch(self, texts: Sequence[str], items: Sequence[Any], between: Callable[[], None] | None) -> None:
        """Judge every answer's model-grader requests in one batch (per judge model) before they are graded."""
        if self.judge is not None:
            requests = [r for text, item in zip(texts, items) for r in self.scorer.judge_requests(text, item)]
            self.judge.prefetch(requests, between)

    def warnings(self, step: int, metrics: dict[str, Any]) -> list[str]:
        """The step's warnings in plain words: the grader failed on answers; the answers give nothing to learn from."""
        found = [self.failure_warning(step, metrics), self.flat_warning(metrics)]
        return [warning for warning in found if warning]

    def flat_warning(self, metrics: dict[str, Any]) -> str | None:
        """Once FLAT_STEPS steps in a row gave every answer to each prompt the same score (no spread: GRPO's
        advantages are all 0 and nothing is learnt), say so and what helps; again only after the spread came back."""
        self.flat_steps = self.flat_steps + 1 if not metrics.get("reward_spread") else 0
        if self.flat_steps != FLAT_STEPS:
            return None
        return (
            f"for {FLAT_STEPS} steps every answer to each prompt scored the same (mean score "
            f"{metrics.get('reward', 0):.2f}), so the model has nothing to learn from: use a grader that gives partial "
            "credit (a multi grader or a text similarity), more answers per prompt, or start from a supervised job "
            "that already gets some answers right"
        )

    def failure_warning(self, step: int, metrics: dict[str, Any]) -> str | None:
        """A plain warning when the grader failed on some of the step's answers (they scored 0), at most once every
        GRADER_WARN_EVERY steps so a grader that keeps failing does not flood the job's log."""
        failures = int(metrics.get("grader_failures") or 0)
        if not failures or (self.warned_at is not None and step - self.warned_at < GRADER_WARN_EVERY):
            return None
        self.warned_at = step
        answers = "an answer" if failures == 1 else f"{failures} answers"
        why = f" ({self.last_problem})" if self.last_problem else ""
        return f"the grader failed on {answers} at step {step}; they scored 0{why}"

    def grade(
        self,
        samples: Samples,
        prompts: Sequence[TokenizedPrompt],
        per_prompt: int,
        between: Callable[[], None] | None = None,
    ) -> tuple[list[float], dict[str, list[float]], int]:
        """Each answer's reward, each named grader's scores, and how many answers a grader failed on (they score
        0); `between` is called while graders run."""
        rewards: list[float] = []
        parts: dict[str, list[float]] = {}
        failures = 0
        self.prefetch(samples.texts, [prompts[row // per_prompt].item for row in range(len(samples.texts))], between)
        for row, text in enumerate(samples.texts):
            if between is not None:  # many quick answers add up too
                between()
            result = self.scorer.grade(text, prompts[row // per_prompt].item, between)
            rewards.append(result.reward)
            if result.failed:
                failures += 1
                self.last_problem = next(iter(result.problems()), None)
            for name, score in result.sub_rewards.items():
                parts.setdefault(name, []).append(score)
        return rewards, parts, failures

    def reference_logps(
        self, model: Any, tensors: AnswerTensors, reference: dict[str, torch.Tensor] | None
    ) -> torch.Tensor:
        """The answers' log-probs under the reference, without a second model: the adapter switched off, or, for a
        run that started from an earlier adapter, that adapter's weights put in for the pass and taken out."""
        import torch

        with torch.no_grad(), start_model(model, reference):
            return answer_logps(model, *tensors, self.cfg.sample_temperature)

    def step(
        self,
        model: Any,
        prompts: Sequence[TokenizedPrompt],
        micro: list[list[int]],
        between: Callable[[], None],
        reference: dict[str, torch.Tensor] | None = None,
    ) -> StepOutcome:
        """One optimizer step's gradients: sample and grade every micro-batch first (the loss divides by all the
        step's answer tokens), then the loss and backward per micro-batch. `between` is called between pieces of
        work (the stop check)."""
        import torch

        timing = {"sample_s": 0.0, "grade_s": 0.0, "update_s": 0.0}  # where the step's time goes
        groups = [self.sample_and_grade(model, [prompts[i] for i in indices], between, timing) for indices in micro]
        tokens = sum(int(g.samples.completion_mask.sum()) for g in groups)
        began = time.monotonic()
        loss_value, kl, clipped = self.update(model, groups, tokens, between, reference)
        timing["update_s"] = time.monotonic() - began
        group_size = self.cfg.group_size
        spread = torch.cat([g.rewards.view(-1, group_size).std(dim=1) for g in groups]).nan_to_num(0.0)
        answers = sum(len(g.samples.texts) for g in groups)
        metrics = {
            "reward": float(torch.cat([g.rewards for g in groups]).mean()),
            "reward_spread": float(spread.mean()),
            "kl": kl,
            "clipped": clipped,
            "answer_tokens": tokens / max(1, answers),
            "cut_short": sum(sum(g.samples.truncated) for g in groups) / max(1, answers),
            "grader_failures": float(sum(g.failures for g in groups)),
            **timing,
        }
        parts: dict[str, list[float]] = {}
        for group in groups:
            for name, scores in group.parts.items():
                parts.setdefault(name, []).extend(scores)
        if len(parts) > 1:
            metrics.update({f"reward/{name}": sum(v) / len(v) for name, v in parts.items()})
        return StepOutcome(loss_value, tokens, metrics)

    def sample_and_grade(
        self, model: Any, chosen: list[TokenizedPrompt], between: Callable[[], None], timing: dict[str, float]
    ) -> _Group:
        """A micro-batch's answers (group_size per prompt), their rewards and the group advantages."""
        import torch

        cfg = self.cfg

        def sampling() -> None:
            failpoint("sample")  # a fault test kills the worker while it samples
            between()

        began = time.monotonic()
        samples = sample_answers(
            model,
            self.tokenizer,
            [p.input_ids for p in chosen],
            group_size=cfg.group_size,
            max_new_tokens=cfg.max_answer_tokens,
            temperature=cfg.sample_temperature,
            device=self.device,
            between_tokens=sampling,
        )
        between()
        graded = time.monotonic()
        timing["sample_s"] += graded - began
        rewards, parts, failures = self.grade(samples, chosen, cfg.group_size, between)
        timing["grade_s"] += time.monotonic() - graded
        reward_tensor = torch.tensor(rewards)
        return _Group(samples, reward_tensor, group_advantages(reward_tensor, cfg.group_size), parts, failures)

    def update(
        self,
        model: Any,
        groups: list[_Group],
        tokens: int,
        between: Callable[[], None],
        reference: dict[str, torch.Tensor] | None,
    ) -> tuple[float, float, float]:
        """The GRPO loss's gradients over the step's groups; (loss, KL, clipped share) over its answer tokens."""
        cfg = self.cfg
        loss_value = kl = clipped = 0.0
        for group in groups:
            between()
            s = group.samples
            tensors = (
                s.prompt_ids.to(self.device),
                s.prompt_mask.to(self.device),
                s.completion_ids.to(self.device),
                s.completion_mask.to(self.device),
            )
            ref = self.reference_logps(model, tensors, reference) if cfg.beta else None
            logps = answer_logps(model, *tensors, cfg.sample_temperature)
            out = grpo_loss(
                logps,
                None,
                ref,
                group.advantages.to(self.device),
                tensors[3],
                beta=cfg.beta,
                epsilon_low=EPSILON,
                epsilon_high=EPSILON,
                tokens_in_step=tokens,
            )
            out.loss.backward()  # type: ignore[no-untyped-call]
            share = int(s.completion_mask.sum()) / max(1, tokens)
            loss_value += float(out.loss.detach())
            kl += out.kl * share
            clipped += out.clipped * share
        return loss_value, kl, clipped

    def answer_and_grade(
        self, model: Any, prompts: Sequence[TokenizedPrompt], between: Callable[[], None], batch: int
    ) -> list[dict[str, Any]]:
        """One answer per prompt (greedy: the model's own best), graded: [{"answer", "reward", "scores", "problems"}]."""
        rows: list[dict[str, Any]] = []
        for start in range(0, len(prompts), batch):
            chunk = prompts[start : start + batch]
            samples = sample_answers(
                model,
                self.tokenizer,
                [p.input_ids for p in chunk],
                group_size=1,
                max_new_tokens=self.cfg.max_answer_tokens,
                temperature=1.0,
                device=self.device,
                greedy=True,
                between_tokens=between,
            )
            self.prefetch(samples.texts, [p.item for p in chunk], between)
            for row, text in enumerate(samples.texts):
                result = self.scorer.grade(text, chunk[row].item, between)
                rows.append(
                    {
                        "answer": text,
                        "reward": result.reward,
                        "scores": result.sub_rewards,
                        "problems": result.problems(),
                    }
                )
            between()
        return rows

    def validation_reward(
        self, model: Any, prompts: Sequence[TokenizedPrompt], between: Callable[[], None]
    ) -> dict[str, float]:
        """The mean reward of the model's answers to the first EVAL_PROMPTS validation prompts (and each grader's)."""
        rows = self.answer_and_grade(model, prompts[:EVAL_PROMPTS], between, self.cfg.batch_size * self.cfg.group_size)
        metrics = {"eval_reward": sum(r["reward"] for r in rows) / max(1, len(rows))}
        names = {name for r in rows for name in r["scores"]}
        if len(names) > 1:
            for name in sorted(names):
                metrics[f"eval_reward/{name}"] = sum(r["scores"].get(name, 0.0) for r in rows) / max(1, len(rows))
        return metrics


@contextmanager
def start_model(model: Any, reference: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """The model the run started from, for the block: the adapter switched off, or, for a run that started from an
    earlier adapter, that adapter's weights put in and the trained ones put back after."""
    if reference is None:
        with model.disable_adapter():
            yield
        return
    params = {name: p for name, p in model.named_parameters() if name in reference}
    current = {name: p.detach().clone() for name, p in params.items()}
    try:
        for name, param in params.items():
            param.data.copy_(reference[name])
        yield
    finally:
        for name, param in params.items():
            param.data.copy_(current[name])


def reward_evaluation(
    learner: RewardLearner,
    model: Any,
    prompts: Sequence[TokenizedPrompt],
    between: Callable[[], None],
    reference: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The end of the job: the start model (adapter off, or the start adapter) and the result on the validation
    prompts: mean rewards and a table of answers with their scores."""
    batch = learner.cfg.batch_size * learner.cfg.group_size
    with start_model(model, reference):
        base = learner.answer_and_grade(model, prompts, between, batch)
    adapted = learner.answer_and_grade(model, prompts, between, batch)
    return {
        "kind": "reward",
        "prompts": len(prompts),
        "reward": {"base": _mean_reward(base), "adapter": _mean_reward(adapted)},
        "rows": [
            {
                "item": {k: v for k, v in p.item.items() if k != "messages"},
                "prompt": p.item.get("messages"),
                "question": (p.item.get("messages") or [{}])[-1].get("content", ""),
                "base": b,
                "adapter": a,
            }
            for p, b, a in list(zip(prompts, base, adapted))[:50]
        ],
    }


def _mean_reward(rows: list[dict[str, Any]]) -> float:
    return float(sum(r["reward"] for r in rows)) / max(1, len(rows))
