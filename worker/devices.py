"""How one job runs on its devices: a small strategy per mode, so the training recipe (`worker.engine`) reads
the same for all three and asks the strategy wherever they differ.

- `SingleDevice` (devices = 1): one process trains on every example, writes every file and may stop anywhere.
- `DataParallel` (devices > 1, launched by `worker.distributed`): each rank trains on its share of every
  micro-batch and the gradients are summed across ranks before the step (`worker.ranks`), so every rank takes
  the same step; rank 0 alone reads the stop flag (and tells the others), reports and writes, and the others
  end after the loop.
- `Fsdp` (devices > 1, sharding = "fsdp"): data parallel over a model sharded across the ranks
  (`worker.sharding`). FSDP sums the gradients itself; every rank runs every forward (a stand-in example whose
  loss counts for nothing when its share is empty, as FSDP gathers weights inside each forward) and takes part
  in every save (the weights are gathered whole for rank 0 to write) and in the end-of-job evaluation.

What a strategy answers: `share` / `eval_share` (the slice of a batch this rank trains or evaluates on),
`sum`, `reduce_grads` and `clip_grad_norm` (reductions across ranks), `agree_stop`, `from_main` and
`agree_on_save` (rank 0's answer on every rank), `prepare`, `sync_weights` and `reseed` (setup and resume),
`adapter_state` / `checkpoint_state` (the weights gathered for saving), and three flags: `writes` (this rank
reports and writes files), `saves` (it takes part in the final save and evaluation) and `polls_stop` (it may
leave during setup or evaluation on its own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worker.ranks import RankGroup

if TYPE_CHECKING:
    from worker.reporting import Reporter


RANK_SEED_STRIDE = 7919  # rank r > 0 draws dropout from seed + stride * r + step: the ranks' draws differ


@dataclass(frozen=True)
class EvalShare:
    """The eval examples this rank evaluates, and how."""

    examples: list[Any] = field(default_factory=list)
    fill: dict[str, Any] = field(default_factory=dict)  # summed_eval_loss's stand-ins: as many forwards as rank 0
    everywhere: bool = False  # evaluate even with an empty share (the other ranks wait on its collectives)

    @property
    def runs(self) -> bool:
        return bool(self.examples) or self.everywhere


class SingleDevice:
    """One process, one device: every answer is the plain one."""

    world = 1
    writes = True  # reports, checkpoints, the adapter and the evaluation are this rank's to write
    saves = True  # runs the final save and the end-of-job evaluation
    polls_stop = True  # may stop during setup or the end-of-job evaluation (no other rank waits on it)

    def share(self, indices: list[int]) -> tuple[list[int], float] | None:
        """The examples of a micro-batch this rank trains on and the weight of their loss; None: none here."""
        return indices, 1.0

    def eval_share(self, examples: list[Any], batch_size: int) -> EvalShare:
        return EvalShare(list(examples))

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks."""
        return list(values)

    def reduce_grads(self, params: list[Any]) -> None:
        """Make every rank's gradients those of the whole step."""

    def clip_grad_norm(self, params: list[Any], max_norm: float) -> Any:
        """Clip the gradients to `max_norm` (0: no clipping); returns the total norm before clipping, or None."""
        import torch

        return torch.nn.utils.clip_grad_norm_(params, max_norm) if max_norm else None

    def agree_stop(self, should_stop: Callable[[], str | None]) -> str | None:
        """The stop request (None, "cancel" or "pause") every rank acts on before the next step."""
        return should_stop()

    def from_main(self, value: int) -> int:
        """Rank 0's `value` on every rank."""
        return value

    def agree_on_save(self, value: bool) -> bool:
        """Rank 0's `value` on every rank that saves."""
        return value

    def prepare(self, model: Any, reporter: Reporter) -> None:
        """Spread the freshly built model over the devices (sharding)."""

    def sync_weights(self, params: list[Any]) -> None:
        """After resuming: rank 0's trainable weights on every rank."""

    def reseed(self, seed: int, step: int) -> None:
        """After resuming: this rank's own random draws (dropout)."""

    def adapter_state(self, model: Any) -> dict[str, Any] | None:
        """The adapter's weights to save instead of the model's own (gathered whole), or None: the model's."""
        return None

    def checkpoint_state(self, model: Any, optimizer: Any) -> dict[str, Any]:
        """`save_checkpoint`'s adapter and optimizer state gathered whole, or {}: the model's and optimizer's."""
        return {}


class DataParallel(SingleDevice):
    """One rank of several, each holding the whole model; the gradients are summed across ranks."""

    polls_stop = False  # one rank alone must not leave a collective: the ranks agree on stopping in the loop

    def __init__(self, group: RankGroup):
        self.group = group
        self.world = group.world
        self.writes = group.main
        self.saves = group.main  # the others hold the same weights: rank 0 saves and evaluates alone

    def share(self, indices: list[int]) -> tuple[list[int], float] | None:
        share = self.group.shard(indices)
        return (share, 1.0) if share else None

    def eval_share(self, examples: list[Any], batch_size: int) -> EvalShare:
        return EvalShare(self.group.shard(by_length(examples)), everywhere=True)

    def sum(self, values: Sequence[float]) -> list[float]:
        return self.group.sum(values)

    def reduce_grads(self, params: list[Any]) -> None:
        self.group.sum_grads(params)  # the ranks' shares of the step add up to one device's

    def agree_stop(self, should_stop: Callable[[], str | None]) -> str | None:
        # Rank 0 alone is answered by the worker's stop flag (worker.distributed); it tells the others.
        return self.group.agree(should_stop() if self.group.main else None)

    def from_main(self, value: int) -> int:
        return self.group.broadcast_int(value)

    def sync_weights(self, params: list[Any]) -> None:
        self.group.broadcast_params(params)

    def reseed(self, seed: int, step: int) -> None:
        if not self.group.main:
            import torch

            torch.manual_seed(seed + RANK_SEED_STRIDE * self.group.rank + step)


class Fsdp(DataParallel):
    """One rank of several over a model sharded with FSDP: forwards, gradient sums and saves are collectives."""

    def __init__(self, group: RankGroup):
        super().__init__(group)
        self.saves = True  # gathering the weights to write is a collective: every rank takes part

    def share(self, indices: list[int]) -> tuple[list[int], float] | None:
        # A rank with no example still runs the forward and backward (their collectives), on a stand-in example
        # whose loss counts for nothing.
        share = self.group.shard(indices)
        return (share, 1.0) if share else (indices[:1], 0.0)

    def eval_share(self, examples: list[Any], batch_size: int) -> EvalShare:
        ordered = by_length(examples)
        fill: dict[str, Any] = {}
        if ordered:  # as many eval forwards on every rank as on rank 0 (the most)
            most = len(ordered[:: self.group.world])
            fill = {"min_batches": -(-most // batch_size), "filler": ordered[0]}
        return EvalShare(self.group.shard(ordered), fill, everywhere=True)

    def reduce_grads(self, params: list[Any]) -> None:
        """FSDP reduce-scatters the gradients in the backward pass, summed (`worker.sharding.shard_model`)."""

    def clip_grad_norm(self, params: list[Any], max_norm: float) -> Any:
        from worker.sharding import full_of

        norm = super().clip_grad_norm(params, max_norm)
        return full_of(norm) if norm is not None else None

    def agree_on_save(self, value: bool) -> bool:
        return bool(self.group.broadcast_int(int(value)))

    def prepare(self, model: Any, reporter: Reporter) -> None:
        """FSDP over the ranks, from rank 0's initial adapter; reports each rank's share of the frozen base."""
        from worker.sharding import shard_model

        group = self.group
        group.broadcast_params([p for p in model.parameters() if p.requires_grad])
        share = shard_model(model, group.device)
        n = group.world
        held = group.sum([share.local_bytes if r == group.rank else 0 for r in range(n)])  # by rank
        reporter.event(
            "setup",
            f"FSDP: each of {n} ranks holds about 1/{n} of the frozen base "
            f"({share.total_bytes / 2**20:.3f} MB): "
            + ", ".join(f"rank {r} {b / 2**20:.3f} MB" for r, b in enumerate(held)),
        )

    def sync_weights(self, params: list[Any]) -> None:
        """Nothing to send: each rank loaded its chunks from the same full checkpoint."""

    def adapter_state(self, model: Any) -> dict[str, Any] | None:
        from worker.sharding import full_adapter_state

        return full_adapter_state(model)

    def checkpoint_state(self, model: Any, optimizer: Any) -> dict[str, Any]:
        from worker.sharding import full_adapter_state, full_optimizer_state

        return {"adapter_state": full_adapter_state(model), "optimizer_state": full_optimizer_state(optimizer)}


def by_length(examples: list[Any]) -> list[Any]:
    """Examples shortest first, so that striding over them shares the work out evenly."""
    return sorted(examples, key=lambda e: len(e.input_ids))


def device_strategy(group: RankGroup | None, sharding: str = "none") -> SingleDevice:
    """The strategy for this process: one device without a group, else data parallel or FSDP."""
    if group is None:
        return SingleDevice()
    return Fsdp(group) if sharding == "fsdp" else DataParallel(group)
