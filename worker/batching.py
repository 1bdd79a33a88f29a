"""Micro-batches for training and evaluation: which examples go together at each optimizer step
(`MicroBatchStream`), and how they become tensors (`collate` padded, `collate_packed` in one row)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union, cast

from worker.config import TrainConfig
from worker.data.tokenization import IGNORE_INDEX, TokenizedExample, TokenizedPair
from worker.schedule import epoch_batches

if TYPE_CHECKING:
    import torch

Device = Union["torch.device", str]  # where a batch's tensors go: a torch.device or its name ("cpu", "cuda:0")


class MicroBatchStream:
    """Micro-batches in a fixed order across epochs, addressable by optimizer step."""

    def __init__(self, examples: list[TokenizedExample] | list[TokenizedPair], cfg: TrainConfig, per_epoch: int):
        self.examples = examples
        self.cfg = cfg
        self.per_epoch = per_epoch
        self.lengths = [e.length for e in examples]
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
        return epoch, batches[within * acc : (within + 1) * acc]


@dataclass
class Batch:
    ids: torch.Tensor
    labels: torch.Tensor
    # (rows, width) padding mask, (1, 1, L, L) block-diagonal causal mask, or None (varlen)
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None = None
    tokens: int = 0  # real (non-padding) tokens


def collate(examples: list[TokenizedExample], pad_id: int, device: Device) -> Batch:
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


def collate_packed(examples: list[TokenizedExample], device: Device, padding_free: bool = False) -> Batch:
    """All examples of a micro-batch in one row, no padding, each attending only to itself.

    Position ids restart at every example and the attention mask is block-diagonal and causal:
    position ids alone would let SDPA attend across examples. The first token of each example
    gets no label, so no example is trained to predict the next example's first token.

    `padding_free` (flash-attention loaded, worker.kernels): no mask at all. transformers' flash-attention
    path reads the example boundaries off the restarting position ids and runs the variable-length kernel
    (as DataCollatorWithFlattening), so no L x L mask is built.
    """
    import torch

    ids = torch.tensor([t for e in examples for t in e.input_ids], dtype=torch.long)
    labels = torch.tensor(
        [IGNORE_INDEX if i == 0 else t for e in examples for i, t in enumerate(e.labels)], dtype=torch.long
    )
    segment = torch.cat([torch.full((len(e.input_ids),), k) for k, e in enumerate(examples)])
    positions = torch.cat([torch.arange(len(e.input_ids)) for e in examples])
    n = ids.numel()
    if padding_free:
        return Batch(ids[None].to(device), labels[None].to(device), None, positions[None].to(device), n)
    allowed = (segment[:, None] == segment[None, :]) & torch.ones(n, n, dtype=torch.bool).tril()
    return Batch(
        ids[None].to(device), labels[None].to(device), allowed[None, None].to(device), positions[None].to(device), n
    )


def collate_pairs(pairs: list[TokenizedPair], pad_id: int, device: Device) -> Batch:
    """Preference pairs padded together: the chosen sides in the first half of the rows, the rejected
    sides in the second half (as TRL's DataCollatorForPreference), so one forward pass serves both."""
    return collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, device)


def make_batch(
    examples: list[TokenizedExample] | list[TokenizedPair],
    pad_id: int,
    device: Device,
    packing: bool,
    *,
    padding_free: bool = False,
) -> Batch:
    """A training micro-batch: preference pairs as chosen rows then rejected rows; examples packed into one
    row when `packing` (without a mask when `padding_free`), else padded."""
    if examples and isinstance(examples[0], TokenizedPair):
        return collate_pairs(examples, pad_id, device)
    singles = cast("list[TokenizedExample]", examples)  # a micro-batch is all pairs or all examples
    if packing:
        return collate_packed(singles, device, padding_free)
    return collate(singles, pad_id, device)
