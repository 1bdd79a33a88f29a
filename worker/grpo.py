"""Group relative policy optimisation (GRPO), the reinforcement method: for each prompt a group of G sampled
answers is scored by the grader, each answer's advantage is its reward against its group's (mean 0, scaled by
the group's spread), and the policy is pushed towards the better answers with PPO's clipped objective plus a
KL penalty towards the reference (the same model with the adapter switched off: no second copy in memory).

The math follows TRL's `GRPOTrainer._compute_loss` (token-level importance ratios, two-sided clip with
`epsilon_low` / `epsilon_high`, the k3 KL estimator, loss types "dapo" (TRL's default: every answer token of the
step weighs the same) and "grpo" (each answer's tokens averaged first)); tests/worker/test_grpo.py holds it to
TRL within 1e-5 on a fixed batch, gradients included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

LOSS_TYPES = ("dapo", "grpo")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """Each reward less its group's mean, over the group's standard deviation (+1e-4) when `scale`; rewards come
    in groups of `group_size` consecutive answers to one prompt. A group whose answers all score the same
    teaches nothing: its advantages are 0."""
    import torch

    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(dim=1).repeat_interleave(group_size)
    advantages = rewards - mean
    if scale:
        std = grouped.std(dim=1).repeat_interleave(group_size)
        advantages = advantages / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


@dataclass
class GRPOStep:
    """One micro-batch's loss (to call backward on) and what the chart shows: the KL to the reference and the
    share of answer tokens whose ratio was clipped (both over the answer tokens)."""

    loss: torch.Tensor
    kl: float
    clipped: float


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    loss_type: str = "dapo",
    tokens_in_step: float | None = None,
) -> GRPOStep:
    """The clipped policy loss (+ beta * KL) of answers with per-token log-probs `logps` (rows x tokens, the
    graph's), `old_logps` when they were sampled (None: this policy, one update per sample as TRL's default),
    `ref_logps` under the reference (needed when beta > 0), `advantages` per row and `mask` of real answer tokens.

    "dapo" divides the summed token losses by `tokens_in_step` (every answer token of the optimizer step; default
    this batch's), so micro-batches add up to the step's mean; "grpo" averages each row, then the rows."""
    import torch

    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    mask = mask.to(logps.dtype)
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    clipped_ratio = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    column = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * column, clipped_ratio * column)
    kl_value = 0.0
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("ref_logps are needed when beta is not 0")
        per_token_kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        per_token = per_token + beta * per_token_kl
        kl_value = float((per_token_kl.detach() * mask).sum() / mask.sum().clamp(min=1.0))
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    else:
        total = mask.sum() if tokens_in_step is None else torch.tensor(float(tokens_in_step))
        loss = (per_token * mask).sum() / total.clamp(min=1.0)
    was_clipped = ((ratio < 1 - epsilon_low) & (column < 0)) | ((ratio > 1 + epsilon_high) & (column > 0))
    clipped = float((was_clipped.to(mask.dtype) * mask).sum() / mask.sum().clamp(min=1.0))
    return GRPOStep(loss, kl_value, clipped)


@dataclass
class Samples:
    """A batch of sampled answers: prompt ids (left-padded) and answer ids (right-padded) with their masks, and
    the answers' text; row i answers prompt i // group_size."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    texts: list[str]
    truncated: list[bool]  # the answer hit max_new_tokens before its end-of-sequence token


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) with each prompt padded on the left to the longest."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt) :] = torch.tensor(list(prompt))
            mask[row, width - len(prompt) :] = 1
    return ids, mask


def answer_mask(completion_ids: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """1 for each answer token up to and including the first end-of-sequence token, 0 after it."""
    import torch

    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_ids), dtype=completion_ids.dtype))
    first = torch.where(
        is_eos.any(dim=1), is_eos.int().argmax(dim=1), torch.full_like(is_eos[:, 0], -1, dtype=torch.long)
    )
    positions = torch.arange(completion_ids.size(1)).expand_as(completion_ids)
    ends = torch.where(first >= 0, first, torch.full_like(first, completion_ids.size(1) - 1))
    return (positions <= ends.unsqueeze(1)).long()


def sample_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    device: Any = "cpu",
    greedy: bool = False,
    between_tokens: Callable[[], None] | None = None,
) -> Samples:
    """`group_size` answers to each prompt, sampled from `model` as it is now (adapter in place, no gradients);
    `greedy`: the likeliest answer. `between_tokens()` is called after each token (it may raise to stop)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Between(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
            if between_tokens is not None:
                between_tokens()
            return False

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    repeated = [p for p in prompts for _ in range(group_size)]
    prompt_ids, prompt_mask = left_pad(repeated, pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                **({"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_p": top_p}),
                top_k=None if greedy else 0,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=eos_ids or None,
                stopping_criteria=StoppingCriteriaList([_Between()]),
            )
    finally:
        model.train(was_training)
    completion_ids = output[:, prompt_ids.size(1) :].cpu()
    if completion_ids.size(1) == 0:
        completion_ids = torch.full((len(repeated), 1), pad_id, dtype=torch.long)
    completion_mask = answer_mask(completion_ids, eos_ids or [pad_id])
    texts, truncated = [], []
    for row in range(completion_ids.size(0)):
        length = int(completion_mask[row].sum())
        ids = completion_ids[row, :length].tolist()
        truncated.append(not ids or ids[-1] not in eos_ids)
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return Samples(prompt_ids.cpu(), prompt_mask.cpu(), completion_ids, completion_mask, texts, truncated)


def answer_logps(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Per-token log-probs of the answers given their prompts (rows x answer tokens), with the logits divided by
    the sampling temperature as the answers were drawn; positions follow the left padding."""
    import torch

    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([prompt_mask, completion_mask], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    width = completion_ids.size(1)
    # The LM head only at the answer's positions (and the one before it): the prompt's logits are never used.
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=width + 1).logits
    logits = logits[:, :-1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
