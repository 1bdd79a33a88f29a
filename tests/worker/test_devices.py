"""The device strategies (`worker.devices`) over a stand-in rank group: what each mode answers, and the recipe
on a rank that does not write (it trains its share and sums gradients, and writes no file).

The real collectives (two CPU ranks over gloo, losses matching one device) are in test_distributed.py.
"""

import pytest
import torch

from worker.config import TrainConfig, TrainSpec
from worker.devices import DataParallel, EvalShare, Fsdp, SingleDevice, device_strategy
from worker.engine import train
from worker.reporting import MemoryReporter

CFG = dict(
    batch_size=4,
    learning_rate=1e-2,
    warmup_ratio=0.0,
    target_preset="attention",
    rank=4,
    alpha=8,
    dropout=0.0,
    final_eval=False,
)


class StandInGroup:
    """A `worker.ranks.RankGroup` without a process group: rank `rank` of `world`, whose collectives answer
    as if every other rank held zeros and rank 0 had asked for `stop_at` (before that many steps)."""

    def __init__(self, rank: int, world: int, stop_at: tuple[int, str] | None = None):
        self.rank, self.world, self.device = rank, world, torch.device("cpu")
        self.stop_at = stop_at
        self.calls: list[str] = []
        self.agreed = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items):
        return list(items[self.rank :: self.world])

    def sum(self, values):
        self.calls.append("sum")
        return [float(v) for v in values]

    def agree(self, request):
        self.calls.append(f"agree:{request}")
        self.agreed += 1
        if self.stop_at is not None and self.agreed > self.stop_at[0]:
            return self.stop_at[1]
        return request

    def broadcast_int(self, value):
        self.calls.append("broadcast_int")
        return value

    def broadcast_params(self, params):
        self.calls.append("broadcast_params")

    def sum_grads(self, params):
        self.calls.append("sum_grads")
        assert any(p.grad is not None for p in params), "summed after the backward pass"


class Param:
    def __init__(self, grad=None):
        self.grad = grad


def test_the_strategy_follows_the_group_and_the_sharding():
    assert type(device_strategy(None)) is SingleDevice
    assert type(device_strategy(StandInGroup(0, 2))) is DataParallel
    assert type(device_strategy(StandInGroup(1, 2), "fsdp")) is Fsdp


def test_one_device_trains_everything_writes_everything_and_reduces_nothing():
    single = SingleDevice()
    assert (single.writes, single.saves, single.polls_stop, single.world) == (True, True, True, 1)
    assert single.share([3, 1, 2]) == ([3, 1, 2], 1.0)
    assert single.sum([1.5, 4]) == [1.5, 4]
    assert single.agree_stop(lambda: "pause") == "pause"
    assert single.adapter_state(None) is None and single.checkpoint_state(None, None) == {}


def test_data_parallel_shares_the_batch_sums_the_gradients_and_rank_0_writes():
    group = StandInGroup(1, 2)
    ranks = DataParallel(group)
    assert (ranks.writes, ranks.saves, ranks.polls_stop, ranks.world) == (False, False, False, 2)
    assert DataParallel(StandInGroup(0, 2)).writes and DataParallel(StandInGroup(0, 2)).saves
    assert ranks.share([7, 8, 9]) == ([8], 1.0)
    assert ranks.share([7]) is None, "an empty share is skipped: this rank's gradients stay zero"
    ranks.reduce_grads([Param(), Param(grad=torch.ones(2))])
    assert group.calls == ["sum_grads"]
    assert ranks.sum([1, 2]) == [1.0, 2.0] and group.calls[-1] == "sum"
    assert ranks.from_main(3) == 3 and group.calls[-1] == "broadcast_int"
    ranks.sync_weights([])
    assert group.calls == ["sum_grads", "sum", "broadcast_int", "broadcast_params"]
    assert ranks.agree_on_save(True) is True and len(group.calls) == 4, (
        "rank 0 saves alone: no collective the others would have to join"
    )


def test_the_stop_request_is_rank_0s_on_every_rank():
    asked = []

    def should_stop():
        asked.append(1)
        return "cancel"

    follower = DataParallel(StandInGroup(1, 2, stop_at=(0, "cancel")))
    assert follower.agree_stop(should_stop) == "cancel" and not asked, "only rank 0 reads the stop flag"
    assert follower.group.calls == ["agree:None"]
    main = DataParallel(StandInGroup(0, 2))
    assert main.agree_stop(should_stop) == "cancel" and asked == [1]
    assert main.group.calls == ["agree:cancel"], "rank 0 tells the others"


def test_fsdp_runs_every_forward_and_lets_fsdp_reduce_the_gradients():
    group = StandInGroup(1, 2)
    fsdp = Fsdp(group)
    assert (fsdp.writes, fsdp.saves, fsdp.polls_stop) == (False, True, False), "every rank takes part in saves"
    assert fsdp.share([7, 8, 9]) == ([8], 1.0)
    assert fsdp.share([7]) == ([7], 0.0), "a stand-in example whose loss counts for nothing"
    fsdp.reduce_grads([Param()])
    fsdp.sync_weights([])
    assert group.calls == [], "FSDP reduce-scatters in the backward; each rank loaded its own chunks"
    assert fsdp.agree_on_save(True) is True and group.calls == ["broadcast_int"]


def test_eval_shares_are_length_balanced_and_fsdp_pads_to_rank_0s_forwards():
    class Ex:
        def __init__(self, n):
            self.input_ids = [0] * n

    examples = [Ex(n) for n in (5, 1, 4, 2, 3)]
    assert SingleDevice().eval_share(examples, 2) == EvalShare(examples)
    share = DataParallel(StandInGroup(1, 2)).eval_share(examples, 2)
    assert [len(e.input_ids) for e in share.examples] == [2, 4] and share.everywhere and share.fill == {}
    share = Fsdp(StandInGroup(1, 2)).eval_share(examples, 2)
    assert [len(e.input_ids) for e in share.examples] == [2, 4]
    assert share.fill["min_batches"] == 2 and len(share.fill["filler"].input_ids) == 1  # rank 0 has 3: 2 batches
    assert not EvalShare().runs and EvalShare(everywhere=True).runs


def spec(tiny_llama, chat_file, out, **extra):
    return TrainSpec(
        str(tiny_llama),
        str(chat_file),
        str(out),
        TrainConfig(**{**CFG, **extra}),
        eval_dataset_path=str(chat_file),
        device="cpu",
    )


def test_a_rank_that_does_not_write_trains_its_share_and_writes_nothing(tiny_llama, chat_file, tmp_path):
    group = StandInGroup(1, 2)
    result = train(
        spec(tiny_llama, chat_file, tmp_path / "out", max_steps=3, save_every=1, keep_best=True, eval_every=1),
        MemoryReporter(),
        group=group,
    )
    assert result.status == "succeeded" and result.steps_done == 3 and result.adapter_dir is None
    assert group.calls.count("sum_grads") == 3, "the gradients are summed across ranks at every step"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), (
        "no checkpoint, adapter or evaluation from a rank that does not write"
    )


def test_rank_0_writes_the_checkpoints_and_the_adapter(tiny_llama, chat_file, tmp_path):
    group = StandInGroup(0, 2)
    result = train(
        spec(tiny_llama, chat_file, tmp_path / "out", max_steps=2, save_every=1), MemoryReporter(), group=group
    )
    assert result.status == "succeeded" and result.adapter_dir == str(tmp_path / "out" / "adapter")
    assert group.calls.count("sum_grads") == 2
    assert (tmp_path / "out" / "checkpoints" / "step-000001").is_dir()
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("request_", ["pause", "cancel"])
def test_a_stop_agreed_from_rank_0_stops_a_follower_without_a_write(tiny_llama, chat_file, tmp_path, request_):
    group = StandInGroup(1, 2, stop_at=(2, request_))
    result = train(
        spec(tiny_llama, chat_file, tmp_path / "out", max_steps=4, save_every=50),
        MemoryReporter(),
        lambda: pytest.fail("a rank other than 0 never reads the stop flag"),
        group=group,
    )
    assert result.status == ("paused" if request_ == "pause" else "cancelled") and result.steps_done == 2
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), (
        "rank 0 writes the pause's checkpoint"
    )
