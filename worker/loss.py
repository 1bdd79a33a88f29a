"""The losses: summed next-token cross-entropy over labelled positions (the supervised objective) and
the mean of it over a set of examples (the eval-loss pass); DPO and ORPO on preference pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker.batching import Batch, Device, collate, collate_pairs, make_batch
from worker.data.tokenization import IGNORE_INDEX, TokenizedExample, TokenizedPair

if TYPE_CHECKING:
    import torch


def _labelled_logits(
    peft_model: Any, batch: Batch, with_rows: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(logits at labelled positions, their targets, the row of each or None), with the LM head run only there.

    For chat data most positions are prompt, and the vocabulary projection is the largest matmul in a
    small model.
    """
    causal = peft_model.get_base_model()
    inputs, targets, keep = _inputs_and_targets(batch)
    parts = _backbone_and_head(causal)
    if parts is None:
        logits: torch.Tensor = peft_model(**inputs).logits[:, :-1][keep]
    else:
        backbone, head = parts
        logits = head(backbone(**inputs).last_hidden_state[:, :-1][keep])
    return logits, targets[keep], keep.nonzero()[:, 0] if with_rows else None


def _inputs_and_targets(batch: Batch) -> tuple[dict[str, torch.Tensor | None], torch.Tensor, torch.Tensor]:
    """(the model's inputs, the next-token targets, the mask of the labelled ones)."""
    targets = batch.labels[:, 1:]
    inputs: dict[str, torch.Tensor | None] = {"input_ids": batch.ids, "attention_mask": batch.attention_mask}
    if batch.position_ids is not None:
        inputs["position_ids"] = batch.position_ids
    return inputs, targets, targets != IGNORE_INDEX


def _backbone_and_head(causal: Any) -> tuple[Any, Any] | None:
    """(backbone, LM head) when the head can run apart from the backbone, on the labelled positions only; None
    when it cannot: logit soft-capping, or a model sharded with FSDP (it gathers its root weights, embeddings
    and LM head, in the root's forward only)."""
    backbone = getattr(causal, causal.base_model_prefix, None)
    head = causal.get_output_embeddings()
    if backbone is None or head is None or getattr(causal.config, "final_logit_softcapping", None) or sharded(causal):
        return None
    return backbone, head


def sharded(module: object) -> bool:
    """True for a model sharded by worker.sharding (FSDP2); without torch.distributed, never."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(module, FSDPModule)


def summed_token_loss(peft_model: Any, batch: Batch) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over labelled positions, with logits computed only there (or never
    materialised, with Liger's fused linear cross-entropy when the model asks for it (worker.kernels) and its
    head is a plain Linear, not one LoRA wraps or saves)."""
    import torch
    import torch.nn.functional as F

    from worker.kernels import uses_fused_loss

    causal = peft_model.get_base_model()
    parts = _backbone_and_head(causal) if uses_fused_loss(causal) else None
    if parts is not None and type(parts[1]) is torch.nn.Linear:
        from worker.kernels import fused_linear_cross_entropy_sum

        backbone, head = parts
        inputs, targets, keep = _inputs_and_targets(batch)
        hidden = backbone(**inputs).last_hidden_state[:, :-1][keep]
        return fused_linear_cross_entropy_sum(head, hidden, targets[keep]), int(keep.sum())
    logits, targets, _ = _labelled_logits(peft_model, batch)
    return F.cross_entropy(logits.float(), targets, reduction="sum"), int(targets.numel())


def mean_token_loss(
    model: Any, examples: list[TokenizedExample], batch_size: int, pad_id: int, device: Device
) -> float:
    """Mean next-token loss over the trained tokens of `examples` (no dropout, no gradients)."""
    total, count = summed_eval_loss(model, examples, batch_size, pad_id, device)
    return total / max(1, count)


def summed_eval_loss(
    model: Any,
    examples: list[TokenizedExample],
    batch_size: int,
    pad_id: int,
    device: Device,
    *,
    min_batches: int = 0,
    filler: TokenizedExample | None = None,
) -> tuple[float, int]:
    """(summed loss, trained tokens) over `examples`, no dropout, no gradients: ranks add theirs up.

    `min_batches`: run at least this many forwards, the missing ones on `filler` and not counted (FSDP ranks
    must all run the same forwards).
    """
    import torch

    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[start : start + batch_size]]
            loss_sum, n = summed_token_loss(model, collate(batch, pad_id, device))
            total += loss_sum.item()
            count += n
        for _ in range(min_batches - -(-len(order) // batch_size)):
            if filler is None:
                raise ValueError("min_batches beyond the examples' own batches needs a filler example")
            summed_token_loss(model, collate([filler], pad_id, device))
    if was_training:
        model.train()
    return total, count


# --- preference losses (DPO, ORPO) -----------------------------------------------------------------


def sequence_logps(peft_model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its labelled (answer) tokens, and how many there are."""
    import torch

    logits, targets, rows = _labelled_logits(peft_model, batch, with_rows=True)
    assert rows is not None  # asked for with_rows
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None])[:, 0]
    n_rows = batch.ids.shape[0]
    summed = torch.zeros(n_rows, dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)
    counts = torch.bincount(rows, minlength=n_rows)
    return summed, counts


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (as TRL's ORPO)."""
    import torch

    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@dataclass
class PreferenceLoss:
    """One micro-batch of pairs: the parts of the step's loss, summed (the caller divides by the step's
    pairs and chosen tokens), and the per-pair rewards for the margin and accuracy metrics."""

    pair_sum: torch.Tensor  # DPO: sum of -log sigmoid(beta * margin); ORPO: sum of -beta * log sigmoid(log odds ratio)
    nll_sum: torch.Tensor  # ORPO: the summed NLL of the chosen answer tokens; 0 for DPO
    chosen_rewards: torch.Tensor  # detached, one per pair
    rejected_rewards: torch.Tensor

    def total(self, pairs: int, chosen_tokens: int) -> torch.Tensor:
        """The loss as TRL defines it for a step of `pairs` pairs with `chosen_tokens` chosen answer tokens."""
        return self.pair_sum / max(1, pairs) + self.nll_sum / max(1, chosen_tokens)


def preference_loss(
    peft_model: Any, batch: Batch, method: str, beta: float, ref_logps: torch.Tensor | None = None
) -> PreferenceLoss:
    """DPO or ORPO on a batch of pairs (chosen rows first, then rejected rows; see collate_pairs).

    DPO (Rafailov et al. 2023, TRL's `sigmoid` loss): the reference is the same model with the
    adapter disabled, so no second copy is held; its log-probs are computed without gradients.
    Rewards are beta times the log-ratio to the reference. ORPO (Hong et al. 2024): no reference;
    the NLL of the chosen answer plus beta times the odds-ratio term on length-averaged log-probs;
    rewards are beta times those averages (as TRL logs them). `ref_logps` (one per row, computed
    beforehand, as TRL's precompute_ref_logps) replaces the reference pass: DPO on top of a
    previous adapter, whose log-probs were taken before training moved it.
    """
    import torch
    import torch.nn.functional as F

    logps, counts = sequence_logps(peft_model, batch)
    n = batch.ids.shape[0] // 2
    if method == "dpo":
        if ref_logps is None:
            with torch.no_grad(), peft_model.disable_adapter():
                ref_logps, _ = sequence_logps(peft_model, batch)
        chosen_ratio, rejected_ratio = logps[:n] - ref_logps[:n], logps[n:] - ref_logps[n:]
        losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
        return PreferenceLoss(
            losses.sum(), logps.new_zeros(()), beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
        )
    if method == "orpo":
        mean_logps = logps / counts.clamp(min=1)
        chosen, rejected = mean_logps[:n], mean_logps[n:]
        log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
        return PreferenceLoss(
            -beta * F.logsigmoid(log_odds).sum(), -logps[:n].sum(), beta * chosen.detach(), beta * rejected.detach()
        )
    raise ValueError(f"unknown preference method {method!r}")


def preference_step(
    model: Any,
    pairs: list[TokenizedPair],
    micro: list[list[int]],
    pad_id: int,
    device: Device,
    method: str,
    beta: float,
    ref_table: torch.Tensor | None = None,
) -> tuple[float, int, dict[str, float]]:
    """Gradients of the DPO / ORPO loss over one optimizer step's micro-batches (of indices into `pairs`),
    normalised over the whole step; returns the step's loss, its real tokens (both sides) and its reward
    margin and accuracy. `ref_table`: the pairs' reference log-probs, when taken before training."""
    import torch

    n_pairs = sum(len(batch) for batch in micro)
    chosen_tokens = sum(pairs[i].chosen.trained_tokens for batch in micro for i in batch)
    step_loss, tokens, margins = 0.0, 0, []
    for indices in micro:
        batch = make_batch([pairs[i] for i in indices], pad_id, device, False)
        part = preference_loss(model, batch, method, beta, rows_of(ref_table, indices))
        loss = part.total(n_pairs, chosen_tokens)
        loss.backward()  # type: ignore[no-untyped-call]
        step_loss += loss.item()
        tokens += batch.tokens
        margins.append(part.chosen_rewards - part.rejected_rewards)
    margin = torch.cat(margins)
    return (
        step_loss,
        tokens,
        {"reward_margin": margin.mean().item(), "reward_accuracy": (margin > 0).float().mean().item()},
    )


def rows_of(table: torch.Tensor | None, indices: list[int]) -> torch.Tensor | None:
    """A pair table's (n, 2) log-probs for a micro-batch, in collate_pairs' row order (chosen, then rejected)."""
    import torch

    if table is None:
        return None
    return torch.cat([table[indices, 0], table[indices, 1]])


def pair_logps(
    model: Any, pairs: list[TokenizedPair], batch_size: int, pad_id: int, device: Device, mean: bool = False
) -> torch.Tensor:
    """An (n, 2) table of each pair's chosen and rejected log-probabilities (summed over the answer tokens,
    or per token with `mean`), computed without dropout or gradients."""
    import torch

    was_training = model.training
    model.eval()
    rows: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            logps, counts = sequence_logps(model, collate_pairs(chunk, pad_id, device))
            if mean:
                logps = logps / counts.clamp(min=1)
            rows.append(torch.stack([logps[: len(chunk)], logps[len(chunk) :]], dim=1))
    if was_training:
        model.train()
    return torch.cat(rows) if rows else torch.zeros((0, 2))


def preference_eval(
    model: Any,
    pairs: list[TokenizedPair],
    batch_size: int,
    pad_id: int,
    device: Device,
    method: str,
    beta: float,
    ref_table: torch.Tensor | None = None,
) -> dict[str, float]:
    """Loss, reward margin and reward accuracy over held-out pairs (no dropout, no gradients); `ref_table`:
    precomputed reference log-probs (pair_logps) when the reference is not the base."""
    import torch

    was_training = model.training
    model.eval()
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].length)
    pair_sum = nll_sum = margin_sum = 0.0
    correct = chosen_tokens = 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            chunk = [pairs[i] for i in indices]
            part = preference_loss(
                model, collate_pairs(chunk, pad_id, device), method, beta, rows_of(ref_table, indices)
            )
            pair_sum += part.pair_sum.item()
            nll_sum += part.nll_sum.item()
            margins = part.chosen_rewards - part.rejected_rewards
            margin_sum += margins.sum().item()
            correct += int((margins > 0).sum())
            chosen_tokens += sum(p.chosen.trained_tokens for p in chunk)
    if was_training:
        model.train()
    n = max(1, len(pairs))
    return {
        "loss": pair_sum / n + nll_sum / max(1, chosen_tokens),
        "reward_margin": margin_sum / n,
        "reward_accuracy": correct / n,
    }
