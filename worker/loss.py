"""The loss: summed next-token cross-entropy over labelled positions (the training objective) and
the mean of it over a set of examples (the eval-loss pass)."""
from __future__ import annotations

from worker.batching import Batch, collate
from worker.data.tokenization import IGNORE_INDEX, TokenizedExample


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


def mean_token_loss(model, examples: list[TokenizedExample], batch_size: int, pad_id: int, device) -> float:
    """Mean next-token loss over the trained tokens of `examples` (no dropout, no gradients)."""
    total, count = summed_eval_loss(model, examples, batch_size, pad_id, device)
    return total / max(1, count)


def summed_eval_loss(model, examples: list[TokenizedExample], batch_size: int, pad_id: int,
                     device) -> tuple[float, int]:
    """(summed loss, trained tokens) over `examples`, no dropout, no gradients: ranks add theirs up."""
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
    return total, count
