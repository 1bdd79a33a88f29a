"""The collectives one data-parallel training run needs, over an initialised torch.distributed group.

Data parallel as DDP does it (each rank its own shard, gradients summed across ranks before the
optimizer step, so every rank takes the same step), written out rather than through the
`DistributedDataParallel` wrapper for three reasons: the loss runs the backbone and the LM head
separately (only on labelled positions), which bypasses the wrapper's forward hooks; a step's
loss is normalised by the trained tokens of the whole global batch, so gradients must be summed,
not averaged; and a rank may get no example of a short micro-batch. LoRA gradients are small, so
one flattened all-reduce per optimizer step (no overlap with the backward pass) costs little.
With `sharding = "fsdp"` FSDP reduces the gradients instead (`worker.sharding`), with the same sum.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

STOP_CODES = (None, "cancel", "pause")


class RankGroup:
    """This process's place in the run (`rank` of `world`) and the collectives over it."""

    def __init__(self, rank: int, world: int, device: Any):
        self.rank, self.world = rank, world
        self.device = device  # where collective tensors live: cpu for gloo, this rank's GPU for nccl

    @property
    def main(self) -> bool:
        """Rank 0 reports, checks the stop flag and writes every file."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share: items rank, rank + world, ... (a length-sorted batch splits evenly)."""
        return list(items[self.rank :: self.world])

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over all ranks (float64, so token counts stay exact)."""
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def agree(self, request: str | None) -> str | None:
        """Rank 0's stop request, on every rank, so all stop before the same step."""
        import torch
        import torch.distributed as dist

        code = torch.tensor([STOP_CODES.index(request) if self.main else 0], dtype=torch.int64, device=self.device)
        dist.broadcast(code, 0)
        return STOP_CODES[int(code.item())]

    def broadcast_int(self, value: int) -> int:
        """Rank 0's `value` on every rank."""
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, 0)
        return int(tensor.item())

    def broadcast_params(self, params: Iterable[Any]) -> None:
        """Rank 0's trainable weights everywhere (as DDP does when it wraps a model)."""
        import torch.distributed as dist

        for p in params:
            dist.broadcast(p.data, 0)

    def sum_grads(self, params: Iterable[Any]) -> None:
        """Sum the gradients over ranks, one flattened all-reduce per dtype; a rank with no
        example this step contributes zeros."""
        import torch
        import torch.distributed as dist

        by_dtype: dict[Any, list[Any]] = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        for group in by_dtype.values():
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
            dist.all_reduce(flat)
            offset = 0
            for p in group:
                n = p.numel()
                p.grad = flat[offset : offset + n].view_as(p)
                offset += n
