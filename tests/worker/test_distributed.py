"""One job on two CPU processes (gloo): the same losses as one process with the same global batch, an
adapter that answers like the one-process adapter, cancel and resume across ranks, and a dead rank
that fails the run instead of hanging it.

Tolerance: per-step train and eval losses within 1e-4 relative of the one-process run (dropout 0;
the two runs differ only in float summation order: each rank pads its half of a micro-batch to its
own longest example and the gradients are summed by an all-reduce). Each two-rank run costs a few
seconds of process start-up (torch, transformers and peft imports in two new processes).
"""

import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tests.conftest import memorisable_conversations, write_jsonl
from tests.waiting import wait_until
from worker.checkpoint import checkpoint_folders
from worker.config import ConfigError, TrainConfig, TrainSpec
from worker.distributed import Supervisor, run_training
from worker.engine import train
from worker.errors import TrainingError
from worker.reporting import MemoryReporter

CFG = dict(
    batch_size=4,
    learning_rate=1e-2,
    warmup_ratio=0.0,
    target_preset="all_linear",
    rank=8,
    alpha=16,
    dropout=0.0,
    max_steps=4,
    final_eval=False,
    save_every=1,
)
REL = 1e-4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(
        tmp_path_factory.mktemp("ddp-data") / "chat.jsonl", [{"messages": m} for m in memorisable_conversations()]
    )


def spec(model, data, out, devices, **extra):
    return TrainSpec(
        str(model),
        str(data),
        str(out),
        TrainConfig(**{**CFG, **extra}, devices=devices),
        eval_dataset_path=str(data),
        device="cpu",
    )


@pytest.fixture(scope="module")
def one_process(tiny_llama, data, tmp_path_factory):
    """The reference: the same job on one process (today's in-process path)."""
    reporter = MemoryReporter()
    result = train(spec(tiny_llama, data, tmp_path_factory.mktemp("one"), 1), reporter)
    assert result.status == "succeeded"
    return reporter, result


def assert_same_losses(points, reference, steps):
    ref = {s: m for s, m in reference.points}
    got = {s: m for s, m in points}
    assert sorted(got) == list(steps), "rank 0 alone reports, once per step"
    for step in steps:
        for key in ("loss", "eval_loss", "grad_norm"):  # Adam hides a wrong gradient scale from the losses
            assert got[step][key] == pytest.approx(ref[step][key], rel=REL), (step, key)
        assert got[step]["lr"] == pytest.approx(ref[step]["lr"], rel=1e-9)


IDS = [[1, 5, 9, 20, 33, 7, 11]]


def logits(model_dir, adapter_dir):
    ids = torch.tensor(IDS)
    with torch.no_grad():
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir)
        return model.eval()(input_ids=ids).logits


class CheckpointsHeard(MemoryReporter):
    """A reporter that hears of each checkpoint (as the object-storage publisher does)."""

    def __init__(self):
        super().__init__()
        self.saved: list[str] = []

    def checkpoint_saved(self, folder) -> None:
        self.saved.append(str(folder))


def test_two_ranks_train_like_one_cancel_stops_both_and_resume_continues(tiny_llama, data, one_process, tmp_path):
    """Cancel after step 2 of a two-rank run, resume it on two ranks: every step's loss is the
    one-process loss, and the adapter answers like the one-process adapter."""
    reference, ref_result = one_process
    out = tmp_path / "job"
    first = CheckpointsHeard()
    supervisor = Supervisor(
        spec(tiny_llama, data, out, 2),
        first,
        lambda: "cancel" if len(first.points) >= 2 else None,
        threads=0,
        timeout_s=60,
    )
    result = supervisor.run()
    assert result.status == "cancelled" and result.steps_done == 2
    assert [p.returncode for p in supervisor.procs] == [0, 0], "both ranks stopped on their own"
    assert [f.name for f in checkpoint_folders(out / "checkpoints")][0] == "step-000002"
    assert [Path(f).name for f in first.saved] == ["step-000001", "step-000002"], (
        "each of rank 0's saves reaches the worker's reporter (which publishes it to the store)"
    )
    assert not (out / "adapter").exists()
    assert_same_losses(first.points, reference, range(1, 3))

    again = MemoryReporter()
    result = run_training(spec(tiny_llama, data, out, 2), again)
    assert result.status == "succeeded" and result.steps_done == 4
    assert result.trainable_params == ref_result.trainable_params
    assert ("resume", "resumed from checkpoint at step 2") in again.events
    assert_same_losses(again.points, reference, range(3, 5))
    assert [k for k, _ in again.events].count("saved") == 1
    expected = logits(tiny_llama, ref_result.adapter_dir)
    got = logits(tiny_llama, result.adapter_dir)
    assert torch.allclose(got, expected, rtol=REL, atol=1e-5)
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_llama)(input_ids=torch.tensor(IDS))
    assert not torch.allclose(got, base.logits, atol=1e-3), "the adapter changed the model"


FSDP_SHARE = re.compile(
    r"FSDP: each of 2 ranks holds about 1/2 of the frozen base \(([\d.]+) MB\): "
    r"rank 0 ([\d.]+) MB, rank 1 ([\d.]+) MB"
)


def test_fsdp_shards_the_base_trains_like_one_device_and_resumes(tiny_llama, tmp_path):
    """sharding=fsdp on two ranks: each holds about half of the frozen base (as the run reports it); every
    step's train loss, eval loss and gradient norm is the one-device one (same tolerance as plain data
    parallel: only the summation order differs); a cancel after step 1 leaves a checkpoint (adapter and
    optimizer state gathered whole) that a second FSDP run resumes on the same curve; the adapter answers
    like the one-device adapter and the end-of-job evaluation (both ranks on the sharded model, rank 0
    writes) is the same.

    Five examples in micro-batches of 4 and 1 (two per step): rank 1 has no example in the second, and its
    eval share is one batch to rank 0's two. FSDP needs every rank in every forward, so both run stand-ins
    that must not count."""
    import json

    five = write_jsonl(tmp_path / "five.jsonl", [{"messages": m} for m in memorisable_conversations()[:5]])

    def job(out, devices, **more):
        cfg = TrainConfig(**{**CFG, "grad_accum": 2, "max_steps": 3, "final_eval": True, **more}, devices=devices)
        return TrainSpec(
            str(tiny_llama), str(five), str(tmp_path / out), cfg, eval_dataset_path=str(five), device="cpu"
        )

    reference = MemoryReporter()
    ref_result = train(job("one", 1), reference)
    first = MemoryReporter()
    result = Supervisor(
        job("fsdp", 2, sharding="fsdp"), first, lambda: "cancel" if first.points else None, threads=0, timeout_s=60
    ).run()
    assert result.status == "cancelled" and result.steps_done == 1
    shares = [FSDP_SHARE.search(message) for kind, message in first.events if kind == "setup"]
    whole, rank0, rank1 = (float(x) for x in next(m for m in shares if m).groups())
    assert whole > 0 and rank0 + rank1 == pytest.approx(whole, rel=1e-3)
    for held in (rank0, rank1):
        assert held == pytest.approx(whole / 2, rel=0.02), "each rank stores half of the base"
    assert_same_losses(first.points, reference, range(1, 2))
    assert [f.name for f in checkpoint_folders(tmp_path / "fsdp" / "checkpoints")] == ["step-000001"]

    again = MemoryReporter()
    result = run_training(job("fsdp", 2, sharding="fsdp"), again)
    assert result.status == "succeeded" and result.steps_done == 3
    assert ("resume", "resumed from checkpoint at step 1") in again.events
    assert_same_losses(again.points, reference, range(2, 4))
    expected = logits(tiny_llama, ref_result.adapter_dir)
    assert torch.allclose(logits(tiny_llama, result.adapter_dir), expected, rtol=REL, atol=1e-5)
    evaluation = json.loads((tmp_path / "fsdp" / "evaluation.json").read_text())
    one = json.loads((tmp_path / "one" / "evaluation.json").read_text())
    # The same answers and counts; losses to float rounding (the sharded sums add up in another order on CPUs
    # without AVX-512, 1e-7 apart).
    assert {k: v for k, v in evaluation.items() if k not in ("loss", "perplexity")} == {
        k: v for k, v in one.items() if k not in ("loss", "perplexity")
    }
    for key in ("loss", "perplexity"):
        assert evaluation[key] == pytest.approx(one[key], rel=1e-5), key


def test_fsdp_is_validated():
    assert TrainConfig().sharding == "none"
    cases = (
        (dict(sharding="zero3"), "must be one of none, fsdp"),
        (dict(sharding="fsdp"), "needs at least 2"),
        (dict(sharding="fsdp", devices=2, qlora=True), "not available with QLoRA"),
        (dict(sharding="fsdp", devices=2, init_lora_weights="pissa"), "not available with PiSSA"),
    )
    for values, words in cases:
        with pytest.raises(ConfigError, match=re.escape(words)) as info:
            TrainConfig(**values)
        assert info.value.field == "sharding"
    with pytest.raises(ConfigError) as info:
        TrainConfig(sharding="fsdp", devices=2, method="dpo")
    assert info.value.field == "devices", "DPO runs on one device, sharded or not"
    assert TrainConfig(sharding="fsdp", devices=2).sharding == "fsdp"


class KillRankOne(MemoryReporter):
    """Kills rank 1 when rank 0 reports its first event (both ranks have joined the group by then)."""

    supervisor = None
    killed_at = None

    def event(self, kind, message):
        super().event(kind, message)
        if self.killed_at is None:
            os.kill(self.supervisor.procs[1].pid, signal.SIGKILL)
            self.killed_at = time.monotonic()


def test_a_dead_rank_fails_the_run_without_a_hang(tiny_llama, data, tmp_path):
    reporter = KillRankOne()
    supervisor = Supervisor(
        spec(tiny_llama, data, tmp_path / "dead", 2), reporter, lambda: None, threads=0, timeout_s=60
    )
    reporter.supervisor = supervisor
    with pytest.raises(TrainingError, match="training process 1 of 2 stopped unexpectedly"):
        supervisor.run()
    assert time.monotonic() - reporter.killed_at < 15
    assert all(p.poll() is not None for p in supervisor.procs), "no rank is left running"


class SlowToEnd:
    """A rank process that has left its main function (its socket is closed) but not yet exited."""

    def wait(self, timeout=None):
        import subprocess

        raise subprocess.TimeoutExpired("rank", timeout)


def test_a_rank_done_before_rank_0s_result_may_take_long_to_exit(tiny_llama, data, tmp_path):
    """Rank 1 finishes (says done, closes its socket) while rank 0 still writes the adapter, and its teardown
    outlasts the exit-code wait (a loaded machine): the run still succeeds with rank 0's result."""
    import socket
    import threading
    from multiprocessing.connection import Connection

    from worker.distributed import send

    supervisor = Supervisor(
        spec(tiny_llama, data, tmp_path, 2), MemoryReporter(), lambda: None, threads=0, timeout_s=10
    )
    ends = [socket.socketpair() for _ in range(2)]
    supervisor.conns = [Connection(ours.detach()) for ours, _ in ends]
    supervisor.procs = [SlowToEnd(), SlowToEnd()]
    rank0, rank1 = (Connection(theirs.detach()) for _, theirs in ends)
    send(rank1, {"op": "done"})
    rank1.close()

    def rank_0_ends_later():
        time.sleep(0.5)
        send(rank0, {"op": "result", "result": {"status": "succeeded", "steps_done": 4, "total_steps": 4}})
        rank0.close()

    threading.Thread(target=rank_0_ends_later).start()
    result = supervisor.serve()
    assert (result.status, result.steps_done) == ("succeeded", 4)


def test_devices_are_validated():
    assert TrainConfig().devices == 1
    for bad, words in (
        (0, "must be between 1 and 64"),
        (2.0, "must be a whole number"),
        (True, "must be a whole number"),
        (65, "must be between 1 and 64"),
        (9, "at most the batch size (8)"),
    ):
        with pytest.raises(ConfigError, match=re.escape(words)) as info:
            TrainConfig(devices=bad)
        assert info.value.field == "devices"


def test_a_worker_refuses_more_devices_than_it_allows(tiny_llama, data, tmp_path):
    with pytest.raises(TrainingError, match="asks for 4 devices and this train worker allows 2"):
        run_training(spec(tiny_llama, data, tmp_path, 4), MemoryReporter(), max_devices=2)


def test_a_rank_exits_when_its_supervisor_is_killed(tmp_path):
    """kill -9 of the train worker leaves no rank behind (the job is then resumed as after any crash)."""
    import subprocess
    import sys
    from pathlib import Path

    rank = (
        "import time; from worker.distributed import exit_with_supervisor; exit_with_supervisor(); "
        "print('watching', flush=True); time.sleep(60)"
    )
    supervisor = (
        f"import os, subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {rank!r}], "
        "start_new_session=True, env={**os.environ, 'LORA_STUDIO_SUPERVISOR_PID': str(os.getpid())}); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen([sys.executable, "-c", supervisor], stdout=subprocess.PIPE, text=True, cwd=root)
    child = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "watching"
    proc.kill()
    proc.wait()
    wait_until(lambda: not _alive(child), timeout=10, interval=0.1, what="the rank to exit with its supervisor")
    assert not _alive(child), "the rank outlived its supervisor"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def listening_addresses(pids):
    """(ip, port) of every listening TCP socket the processes `pids` hold (psutil when installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    found = []
    if psutil is not None:
        for pid in pids:
            try:
                conns = psutil.Process(pid).net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue
            found += [(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
        return found
    import ipaddress

    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                hexip, hexport = cols[1].split(":")
                raw = bytes.fromhex(hexip)
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))
                found.append((str(ipaddress.ip_address(raw)), int(hexport, 16)))
    return found


class LooksAtTheRendezvous(MemoryReporter):
    """At rank 0's first metric point (both ranks have joined and run a step): the listening sockets of
    the supervisor and its ranks, and what a process without the job's secret gets from the store."""

    supervisor = None
    listening = None
    outsider = None

    def log(self, step, metrics):
        super().log(step, metrics)
        if self.listening is None:
            pids = [os.getpid()] + [p.pid for p in self.supervisor.procs]
            self.listening = listening_addresses(pids)
            try:
                self.outsider = self.look_as_outsider()
            except Exception as exc:  # noqa: BLE001 - the test reports it after the listening check
                self.outsider = exc

    def look_as_outsider(self):
        import datetime

        import torch.distributed as dist

        from worker.rendezvous import RendezvousRefused, SealedStore, join_store

        seen = {}
        host, port = self.supervisor.host, self.supervisor.port
        try:
            join_store(host, port, "ab" * 32, 5)
            seen["joined"] = True
        except RendezvousRefused:
            seen["joined"] = False
        plain = dist.TCPStore(host, port, None, False, timeout=datetime.timedelta(seconds=5))
        keys = plain.list_keys()
        seen["keys"] = keys
        seen["values"] = {k: bytes(plain.get(k)) for k in keys}
        wrong = SealedStore.over(plain, "cd" * 32)
        right = SealedStore.over(plain, self.supervisor.secret)
        seen["wrong_reads"] = []
        for key in ("auth", "0//cpu//0/0", "0//cpu//0/1"):
            try:
                seen["wrong_reads"].append(wrong.check([key]) and wrong.get(key))
            except RendezvousRefused:
                seen["wrong_reads"].append("refused")
        seen["right_auth"] = right.get("auth")
        plain.set(right.name("forged"), b"x" * 80)  # an outsider's write under a name it guessed
        try:
            right.get("forged")
            seen["forged"] = "accepted"
        except RendezvousRefused:
            seen["forged"] = "refused"
        return seen


def test_the_rendezvous_listens_on_loopback_only_and_needs_the_jobs_secret(tiny_llama, data, tmp_path):
    """While a two-rank job runs, every socket its processes listen on is a loopback one (the store and
    gloo's), and a process without the job's secret cannot join: a rank's join refuses the store, the
    store's names are opaque and its values sealed, and an entry forged without the secret is refused."""
    import ipaddress

    reporter = LooksAtTheRendezvous()
    supervisor = Supervisor(
        spec(tiny_llama, data, tmp_path / "job", 2, max_steps=1), reporter, lambda: None, threads=0, timeout_s=60
    )
    reporter.supervisor = supervisor
    result = supervisor.run()
    assert result.status == "succeeded"
    assert reporter.listening is not None
    for ip, port in reporter.listening:
        assert ipaddress.ip_address(ip).is_loopback, f"{ip}:{port} listens beyond loopback"
    assert supervisor.port in [port for _, port in reporter.listening], "the store was seen listening"
    assert len(reporter.listening) >= 2, "the store and the ranks' gloo listeners"

    seen = reporter.outsider
    assert isinstance(seen, dict), seen
    assert seen["joined"] is False, "a rank with another secret is refused"
    assert seen["keys"] and all(re.fullmatch(r"job/[0-9a-f]{64}", k) for k in seen["keys"]), seen["keys"]
    for value in seen["values"].values():
        assert b"lora-studio" not in value and b"127.0.0.1" not in value
    assert seen["wrong_reads"] == [False, False, False], "another secret finds none of the job's entries"
    assert seen["right_auth"] == b"lora-studio rendezvous"
    assert seen["forged"] == "refused"
    assert "LORA_STUDIO_RENDEZVOUS_SECRET" not in os.environ


def test_the_rendezvous_host_and_interfaces_follow_the_setting(monkeypatch):
    from worker.rendezvous import interface_of, rendezvous_host

    monkeypatch.delenv("LORA_STUDIO_RENDEZVOUS_HOST", raising=False)
    assert rendezvous_host() == "127.0.0.1" and interface_of("127.0.0.1") == "lo"
    monkeypatch.setenv("LORA_STUDIO_RENDEZVOUS_HOST", "127.0.0.2")
    assert rendezvous_host() == "127.0.0.2"


def test_a_rendezvous_host_this_machine_lacks_fails_the_run_clearly(tiny_llama, data, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_RENDEZVOUS_HOST", "192.0.2.1")  # TEST-NET-1: no interface holds it
    with pytest.raises(TrainingError, match="cannot listen on 192.0.2.1 .*LORA_STUDIO_RENDEZVOUS_HOST"):
        run_training(spec(tiny_llama, data, tmp_path, 2), MemoryReporter())
