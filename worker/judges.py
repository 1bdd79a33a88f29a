"""Judge models inside a training run: the model graders (score_model, label_model) of a reinforcement job ask a
model loaded in the job's own process, so judging never queues on the chat worker other users chat through and its
time is the job's.

`LocalJudge` is the `Scorer`'s judge. `prefetch(requests, between)` judges a batch of requests (all the answers of
a micro-batch) in one generate per judge model and sampling; the Scorer's calls that follow are then answered from
what it judged. A judge that is the job's own base without an adapter answers with the training model itself, its
adapter switched off (no second copy in memory); any other is loaded once in a `ModelPool` (chat's generation code)
within a budget made for the judges. `between()` is called after each token judged (it may raise to stop).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.config import GenerationConfig

JUDGE_TOKENS = 256  # a judge's answer is a score or a label with a short reason (when max_completions_tokens is unset)
MIB = 2**20
Request = tuple[str, list[dict[str, str]], dict[str, Any]]  # (model, messages, sampling): the Scorer's judge call


@dataclass(frozen=True)
class OwnModel:
    """The training model, to judge with as its base (the adapter switched off)."""

    model: Any
    tokenizer: Any
    device: Any
    base_path: str


def judge_generation(sampling: dict[str, Any], max_tokens: int) -> GenerationConfig:
    """A grader's sampling_params as generation settings: greedy unless it sets a temperature, its answer at most
    `max_tokens` tokens (max_completions_tokens, else JUDGE_TOKENS, capped)."""
    return GenerationConfig(
        max_new_tokens=max(1, min(int(sampling.get("max_completions_tokens") or JUDGE_TOKENS), max_tokens)),
        temperature=float(sampling.get("temperature") or 0.0),
        top_p=float(sampling.get("top_p") or 1.0),
        seed=int(sampling.get("seed") or 0),
    )


def _adapter_off(model: Any) -> bool:
    """Whether the model's LoRA layers are switched off now."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(m.disable_adapters for m in model.modules() if isinstance(m, BaseTunerLayer))


def _key(request: Request) -> str:
    return json.dumps(request, sort_keys=True)


class LocalJudge:
    """Judges by model name: `judges` maps each name the grader uses to {"base": folder, "adapter": folder or None,
    "max_tokens": cap}."""

    def __init__(self, judges: dict[str, dict[str, Any]], *, device: str = "auto", own: OwnModel | None = None):
        self.judges = judges
        self.device = device
        self.own = own
        self.pool: Any = None  # worker.inference.ModelPool, made at the first judge that needs one
        self.answers: dict[str, str] = {}  # the last batch's answers by request
        self.failures: dict[str, str] = {}  # the last batch's failures by request, in plain words

    def load(self, between: Callable[[], None] | None = None) -> None:
        """Load every judge that is not the training model now (at setup: a stop is looked at between them)."""
        for model, found in self.judges.items():
            if not self._is_own(found):
                if between is not None:
                    between()
                if self.pool is None:
                    self.pool = self._new_pool()
                self.pool.load(found["base"], self._adapter(model, found))

    def _adapter(self, model: str, found: dict[str, Any]) -> tuple[str, str] | None:
        return (f"judge{list(self.judges).index(model)}", found["adapter"]) if found.get("adapter") else None

    def close(self) -> None:
        self.pool = None
        self.answers.clear()
        self.failures.clear()

    def __call__(self, model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
        request = (model, messages, sampling)
        found = self.answers.get(_key(request))
        if found is not None:
            return found
        if _key(request) in self.failures:
            raise RuntimeError(self.failures[_key(request)])
        return self._judge(model, [messages], sampling, None)[0]

    def prefetch(self, requests: Sequence[Request], between: Callable[[], None] | None = None) -> None:
        """Judge `requests` now, one generate per (model, sampling); the Scorer's calls for them are answered after.
        A judge that fails leaves its reason for them (they score 0); a stop from `between` and running out of
        memory go on up."""
        import torch

        self.answers.clear()
        self.failures.clear()
        stopped: list[BaseException] = []

        def watched() -> None:
            try:
                if between is not None:
                    between()
            except BaseException as exc:
                stopped.append(exc)
                raise

        groups: dict[str, list[Request]] = {}
        for request in requests:
            groups.setdefault(json.dumps([request[0], request[2]], sort_keys=True), []).append(request)
        for group in groups.values():
            model, _messages, sampling = group[0]
            unique = list({_key(r): r for r in group}.values())
            try:
                texts = self._judge(model, [r[1] for r in unique], sampling, watched)
            except (MemoryError, torch.cuda.OutOfMemoryError):
                raise
            except Exception as exc:
                if stopped:
                    raise
                self.failures.update({_key(r): str(exc) or type(exc).__name__ for r in unique})
                continue
            self.answers.update({_key(r): text for r, text in zip(unique, texts, strict=True)})

    def _judge(
        self,
        model: str,
        conversations: list[list[dict[str, str]]],
        sampling: dict[str, Any],
        between: Callable[[], None] | None,
    ) -> list[str]:
        found = self.judges.get(model)
        if found is None:
            raise RuntimeError(f"the judge model '{model}' was not given to this job")
        gen = judge_generation(sampling, int(found.get("max_tokens") or JUDGE_TOKENS))
        if self._is_own(found):
            return self._own_answers(conversations, gen, between)
        return self._pool_answers(model, found, conversations, gen, between)

    def _is_own(self, found: dict[str, Any]) -> bool:
        own = self.own
        return (
            own is not None
            and not found.get("adapter")
            and Path(found["base"]).resolve() == Path(own.base_path).resolve()
        )

    def _own_answers(
        self, conversations: list[list[dict[str, str]]], gen: GenerationConfig, between: Callable[[], None] | None
    ) -> list[str]:
        """The training model's answers with its adapter off (eval mode, no gradients: `sample_answers`)."""
        from worker.data.tokenization import prompt_ids
        from worker.grpo import sample_answers

        own = self.own
        assert own is not None
        prompts = [prompt_ids(own.tokenizer, messages) for messages in conversations]
        # inside a block that already switched the adapter off (the end-of-job evaluation's start model), leave it
        # so: PEFT's disable_adapter() switches it back on at its end
        off = contextlib.nullcontext() if _adapter_off(own.model) else own.model.disable_adapter()
        with off:
            samples = sample_answers(
                own.model,
                own.tokenizer,
                prompts,
                group_size=1,
                max_new_tokens=gen.max_new_tokens,
                temperature=gen.temperature or 1.0,
                top_p=gen.top_p,
                device=own.device,
                greedy=gen.temperature == 0,
                between_tokens=between,
            )
        return list(samples.texts)

    def _pool_answers(
        self,
        model: str,
        found: dict[str, Any],
        conversations: list[list[dict[str, str]]],
        gen: GenerationConfig,
        between: Callable[[], None] | None,
    ) -> list[str]:
        """The judge's answers from its own copy in the pool; the training's random state is kept as it was (the
        pool seeds each generate)."""
        import torch

        if self.pool is None:
            self.pool = self._new_pool()
        adapter = self._adapter(model, found)

        def should_stop() -> bool:
            if between is not None:
                between()
            return False

        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=cuda):
            return list(
                self.pool.generate_many(
                    found["base"], [(messages, adapter) for messages in conversations], gen, should_stop=should_stop
                )
            )

    def _new_pool(self) -> Any:
        """A pool whose budget holds every judge that is not the training model at once (none is evicted)."""
        from worker.inference import ModelPool, estimate_adapter_bytes, estimate_base_bytes
        from worker.modeling import choose_device

        dtype = choose_device(self.device).dtype
        others = [j for j in self.judges.values() if not self._is_own(j)]
        need = sum(estimate_base_bytes(base, dtype) for base in {j["base"] for j in others})
        need += sum(estimate_adapter_bytes(j["adapter"]) for j in others if j.get("adapter"))
        return ModelPool(memory_budget_mb=max(64.0, 1.25 * need / MIB), device=self.device)
