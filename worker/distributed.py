"""One job on several devices: the engine on N processes with torch.distributed (data parallel; with
`sharding = "fsdp"` the model is also sharded across them, see `worker.sharding`).

`run_training(spec, reporter, should_stop)` is the launcher the train worker calls. With
`devices = 1` it is `engine.train` in this process, unchanged. With N > 1 this process becomes a
supervisor and starts N rank processes, `python -m worker.distributed` (a fixed argv, no shell,
nothing from the user on the command line; each is told its rank, the rendezvous port and the
spec over its own socket pair, as JSON). Rank 0 sends every reporter call and stop check back here
and waits for the answer, so the real reporter (the database, the live chart) and the stop flag
stay with the caller, as with one device, and a WorkLost or a cancel reaches the run the same way.

The ranks meet at a TCPStore this process opens on a free port (one machine; gloo on CPU, nccl on
CUDA with rank r on GPU r). On a CPU worker the N processes share its cores.

The rendezvous is closed to anyone but the job:

* It listens on 127.0.0.1 only (or on the address `LORA_STUDIO_RENDEZVOUS_HOST` names): this process
  binds the socket itself and hands it to the store (whose own server would bind every interface).
  Gloo, NCCL and TensorPipe are told the interface that holds that address (`lo` by default) through
  `GLOO_SOCKET_IFNAME`, `NCCL_SOCKET_IFNAME` and `TP_SOCKET_IFNAME`, unless the admin set them.
* A per-job secret (`secrets.token_hex(32)`) goes to each rank in its environment (never argv, which
  `ps` shows), and every store operation of the job goes through `SealedStore`: key names are an
  HMAC of the name under the secret, values are encrypted (an HMAC-SHA256 keystream, random nonce)
  and authenticated (HMAC-SHA256 over key, nonce and ciphertext; encrypt-then-MAC). A process
  without the secret that connects to the store sees only opaque names and sealed bytes: it can
  read none of the rendezvous data (gloo addresses, the NCCL unique id), and an entry it writes is
  refused by the ranks rather than followed, so it cannot join the group or redirect a rank. The
  launcher seals an `auth` entry before it starts the ranks, and a rank refuses to join a store that
  does not hold it (a wrong port, a squatter, a wrong secret).
* Left: a local process can still delete or flood store keys (the run then fails or times out, it is
  not joined), and the collectives' own connections are unauthenticated (gloo and NCCL have none);
  on loopback only processes of this machine can reach them, and they cannot learn their addresses
  from the store.

No hang: a rank that dies closes its socket, and the supervisor then ends all ranks and fails the
run with what they said (the first known error, else which rank stopped and its exit code);
collectives time out after `timeout_s`; a rank whose supervisor dies exits within a second; ranks
run in their own session, so a Ctrl-C meant for the worker reaches only the supervisor, which
pauses the job through rank 0 as with one device.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import fields
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

from worker.config import ConfigError, TrainSpec
from worker.data.problems import DatasetError
from worker.engine import train
from worker.errors import InputError, TrainingError
from worker.rendezvous import (
    AUTH_KEY,
    AUTH_VALUE,
    HOST_ENV,
    IFNAME_ENVS,
    SECRET_ENV,
    SealedStore,
    interface_of,
    join_store,
    listen_socket,
    rendezvous_host,
)
from worker.reporting import Reporter, StopCheck, WorkLost, checkpoint_hook, never_stop
from worker.run_state import TrainResult
from worker.warm import WarmBases

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0  # a collective waits this long for the other ranks (rank 0 saving a checkpoint, say)
ERROR_GRACE_S = 3.0  # after one rank fails, how long the others get to say why before they are ended
FD_ENV = "LORA_STUDIO_RANK_FD"
SUPERVISOR_ENV = "LORA_STUDIO_SUPERVISOR_PID"


def run_training(
    spec: TrainSpec,
    reporter: Reporter,
    should_stop: StopCheck = never_stop,
    *,
    max_devices: int = 0,
    threads: int = 0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    warm: WarmBases | None = None,
) -> TrainResult:
    """Train on `spec.config.devices` processes; `max_devices` (0: no cap) is what this worker allows.

    `warm` (bases kept loaded between jobs) serves one-device runs only: rank processes load their own.
    """
    n = spec.config.devices
    if n == 1:
        return train(spec, reporter, should_stop, warm=warm)
    check_devices(spec, n, max_devices)
    return Supervisor(spec, reporter, should_stop, threads=threads, timeout_s=timeout_s).run()


def check_devices(spec: TrainSpec, n: int, max_devices: int) -> None:
    """TrainingError when this worker cannot give the job `n` devices."""
    from worker.modeling import choose_device

    if max_devices and n > max_devices:
        raise TrainingError(
            f"this job asks for {n} devices and this train worker allows {max_devices} "
            "(setting TRAIN_MAX_DEVICES); retry with fewer devices"
        )
    if choose_device(spec.device).is_cuda:
        import torch

        have = torch.cuda.device_count()
        if n > have:
            raise TrainingError(
                f"this job asks for {n} GPUs and this train worker has {have}; retry with fewer devices"
            )


def cpu_threads_per_rank(n: int, threads: int = 0) -> int:
    """Torch threads for each of n CPU ranks: the worker's threads (or cores) shared out, at least 1."""
    return max(1, (threads or os.cpu_count() or 1) // n)


# --- the rendezvous: bound to one interface, sealed with the job's secret -----------------------------


def send(conn: Connection, message: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(message).encode())


def receive(conn: Connection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(conn.recv_bytes())
    return message


def error_message(exc: BaseException) -> dict[str, Any]:
    """An exception as a message the supervisor can raise again."""
    message: dict[str, Any] = {"op": "error", "type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, TrainingError):
        message["code"] = exc.code
    elif isinstance(exc, InputError):
        message.update(field=exc.field, message=exc.message)
    return message


def error_from(message: dict[str, Any], rank: int) -> BaseException:
    kind, text = message.get("type"), message.get("message", "")
    if kind == "TrainingError":
        return TrainingError(text, message.get("code") or "training_error")
    if kind in ("ConfigError", "InputError"):
        return (ConfigError if kind == "ConfigError" else InputError)(message.get("field") or "config", text)
    if kind == "DatasetError":
        return TrainingError(text)  # its problems list does not travel; the text says where
    return RuntimeError(f"training process {rank} failed: {kind}: {text}")


KNOWN_ERRORS = (TrainingError, InputError)


# --- the supervisor (the train worker's process) ------------------------------------------------------


class Supervisor:
    """Starts the ranks, answers rank 0's reporter and stop-check calls, and ends every rank on the way out."""

    def __init__(self, spec: TrainSpec, reporter: Reporter, should_stop: StopCheck, *, threads: int, timeout_s: float):
        self.spec, self.reporter, self.should_stop = spec, reporter, should_stop
        self.n = spec.config.devices
        self.threads, self.timeout_s = threads, timeout_s
        self.procs: list[subprocess.Popen[bytes]] = []
        self.conns: list[Connection] = []
        self.host = rendezvous_host()
        self.port = 0  # the store's, once it listens
        self.secret = secrets.token_hex(32)  # the job's: each rank gets it in its environment

    def run(self) -> TrainResult:
        import datetime

        import torch.distributed as dist

        try:
            sock = listen_socket(self.host)
        except OSError as exc:
            raise TrainingError(
                f"this train worker cannot listen on {self.host} for the job's rendezvous ({exc}); "
                f"check the setting {HOST_ENV} (an IPv4 address or host name of this machine)"
            ) from exc
        self.port = sock.getsockname()[1]
        store = dist.TCPStore(
            self.host,
            self.port,
            None,
            True,
            timeout=datetime.timedelta(seconds=self.timeout_s),
            wait_for_workers=False,
            master_listen_fd=sock.detach(),
        )
        try:
            SealedStore.over(store, self.secret).set(AUTH_KEY, AUTH_VALUE)
            self.start(self.port)
            return self.serve()
        finally:
            self.end_all()
            del store

    def start(self, port: int) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        interface = interface_of(self.host)  # the collectives bind where the store listens (lo by default)
        for name in IFNAME_ENVS:
            if interface and not env.get(name):
                env[name] = interface
        env[SUPERVISOR_ENV] = str(os.getpid())
        env[SECRET_ENV] = self.secret
        hello = {
            "world": self.n,
            "host": self.host,
            "port": port,
            "spec": self.spec.to_dict(),
            "timeout_s": self.timeout_s,
            "threads": cpu_threads_per_rank(self.n, self.threads),
        }
        for rank in range(self.n):
            ours, theirs = socket.socketpair()
            env[FD_ENV] = str(theirs.fileno())
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker.distributed"],
                env=env,
                cwd=root,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
            theirs.close()
            conn = Connection(ours.detach())
            self.procs.append(proc)
            self.conns.append(conn)
            send(conn, {**hello, "rank": rank})

    def serve(self) -> TrainResult:
        """Answer rank 0 until it sends its result and every rank has ended; any rank's failure before
        the result ends the run."""
        live = {conn: rank for rank, conn in enumerate(self.conns)}
        finished: set[int] = set()  # ranks that said "done": their socket closes before their process has ended
        result: TrainResult | None = None
        deadline = None
        while live:
            if deadline is not None and time.monotonic() > deadline:
                log.warning("ranks %s did not end after the result; they are stopped", sorted(live.values()))
                break
            for conn in cast("list[Connection]", wait(list(live), timeout=1.0)):
                rank = live[conn]
                try:
                    message = receive(conn)
                except (EOFError, OSError):
                    del live[conn]
                    # (waits a little: ranks end on their own, not by end_all; longer once the result is in, as a
                    # loaded machine can take seconds to tear a rank's interpreter down)
                    code = self.exit_code(rank, within_s=5.0 if result is None else 15.0)
                    if code != 0 and result is None and rank not in finished:
                        raise self.failure(rank, None) from None
                    continue
                op = message.get("op")
                if op == "result":
                    result = TrainResult(
                        **{
                            f.name: message["result"][f.name]
                            for f in fields(TrainResult)
                            if f.name in message["result"]
                        }
                    )
                    deadline = time.monotonic() + self.timeout_s
                elif op == "error":
                    if result is None:
                        raise self.failure(rank, message)
                    log.warning("rank %s failed after the run's result: %s", rank, message.get("message"))
                elif op == "done":
                    finished.add(rank)
                else:
                    send(conn, {"value": self.answer(message)})
        if result is None:
            raise TrainingError("the training processes ended without a result")
        return result

    def answer(self, message: dict[str, Any]) -> Any:
        """Run one of rank 0's calls here; an exception (WorkLost, say) ends the run from this process."""
        op = message.get("op")
        if op == "log":
            return self.reporter.log(message["step"], message["metrics"])
        if op == "event":
            return self.reporter.event(message["kind"], message["message"])
        if op == "guard":
            guard = getattr(self.reporter, "guard", None)
            return guard() if guard else None
        if op == "stop":
            return self.should_stop()
        if op == "checkpoint":  # rank 0 saved one: the reporter may publish it (object storage)
            return checkpoint_hook(self.reporter)(Path(message["folder"]))
        raise RuntimeError(f"unknown request from rank 0: {op!r}")

    def exit_code(self, rank: int, within_s: float = 5.0) -> int | None:
        try:
            return self.procs[rank].wait(timeout=within_s)
        except subprocess.TimeoutExpired:
            return None

    def failure(self, first_rank: int, first: dict[str, Any] | None) -> BaseException:
        """The error to raise for the run, from what the ranks say within a short grace: a known error
        (a rank out of memory, say) first, then a rank that died without a word (not the others' broken
        collectives), then the first error reported."""
        reports: dict[int, dict[str, Any] | None] = {first_rank: first}
        deadline = time.monotonic() + ERROR_GRACE_S
        pending = [c for r, c in enumerate(self.conns) if r != first_rank]
        while pending and time.monotonic() < deadline:
            for conn in cast("list[Connection]", wait(pending, timeout=max(0.0, deadline - time.monotonic()))):
                rank = self.conns.index(conn)
                try:
                    message = receive(conn)
                except (EOFError, OSError):
                    pending.remove(conn)
                    reports.setdefault(rank, None)
                    continue
                if message.get("op") == "error":
                    reports[rank] = message
                    pending.remove(conn)
        errors = [error_from(m, rank) for rank, m in reports.items() if m is not None]
        for exc in errors:
            if isinstance(exc, KNOWN_ERRORS):
                return exc
        for rank, report in reports.items():
            code = self.exit_code(rank, within_s=1.0)
            if report is None and code != 0:
                return TrainingError(
                    f"training process {rank} of {self.n} stopped unexpectedly (exit code {code}), "
                    "so the run was stopped on every device; its last checkpoint is kept"
                )
        return errors[0] if errors else TrainingError("a training process stopped unexpectedly")

    def end_all(self) -> None:
        """Terminate the ranks still running (then kill them), and close the sockets."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for conn in self.conns:
            conn.close()


# --- a rank process --------------------------------------------------------------------------------


class RemoteReporter:
    """Rank 0's reporter: every call is answered by the supervisor's reporter."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.lock = threading.Lock()

    def call(self, message: dict[str, Any]) -> Any:
        with self.lock:
            send(self.conn, message)
            return receive(self.conn)["value"]

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.call({"op": "log", "step": step, "metrics": metrics})

    def event(self, kind: str, message: str) -> None:
        self.call({"op": "event", "kind": kind, "message": message})

    def guard(self) -> None:
        self.call({"op": "guard"})

    def should_stop(self) -> str | None:
        request: str | None = self.call({"op": "stop"})
        return request

    def checkpoint_saved(self, folder: Path) -> None:
        self.call({"op": "checkpoint", "folder": str(folder)})


class SilentReporter:
    """The other ranks' reporter: rank 0 reports for the run."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        return None

    def event(self, kind: str, message: str) -> None:
        return None

    def guard(self) -> None:
        return None


def exit_with_supervisor() -> None:
    """End this rank within a second of its supervisor's death (a kill -9 of the train worker), even one
    that came before this process got here (then its parent is already someone else)."""
    parent = int(os.environ.get(SUPERVISOR_ENV) or os.getppid())

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(1.0)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def rank_main() -> int:
    """One rank: join the group, run the engine on this rank's shard, tell the supervisor how it ended."""
    exit_with_supervisor()
    conn = Connection(int(os.environ.pop(FD_ENV)))
    secret = os.environ.pop(SECRET_ENV, "")
    hello = receive(conn)
    rank, world = hello["rank"], hello["world"]
    logging.basicConfig(level=logging.WARNING, format=f"rank {rank}: %(levelname)s %(name)s: %(message)s")
    try:
        import datetime

        import torch
        import torch.distributed as dist

        from worker.modeling import choose_device
        from worker.ranks import RankGroup

        spec = TrainSpec.from_dict(hello["spec"])
        cuda = choose_device(spec.device).is_cuda
        if cuda:
            torch.cuda.set_device(rank)
        else:
            torch.set_num_threads(hello["threads"])
        timeout = datetime.timedelta(seconds=hello["timeout_s"])
        store = join_store(hello["host"], hello["port"], secret, hello["timeout_s"])
        dist.init_process_group("nccl" if cuda else "gloo", store=store, rank=rank, world_size=world, timeout=timeout)
        group = RankGroup(rank, world, torch.device("cuda", rank) if cuda else torch.device("cpu"))
        if rank == 0:
            reporter = RemoteReporter(conn)
            result = train(spec, reporter, reporter.should_stop, group=group)
            payload = {f.name: getattr(result, f.name) for f in fields(TrainResult) if f.name != "model"}
            send(conn, {"op": "result", "result": payload})
        else:
            train(spec, SilentReporter(), group=group)
            send(conn, {"op": "done"})
        dist.destroy_process_group()
        return 0
    except BaseException as exc:  # noqa: BLE001 - every way out is reported to the supervisor
        if not isinstance(exc, (TrainingError, InputError, DatasetError, WorkLost)):
            log.exception("rank %s failed", rank)
        try:
            send(conn, error_message(exc))
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(rank_main())
