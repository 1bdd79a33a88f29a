"""The embedded Redis keeps its data in var/redis: a queued message survives a stop and start of
`make run` (SIGTERM) and even a kill -9 a moment after it was written. Its port: 6390, another free one when
6390 is taken and EMBEDDED_REDIS_PORT is unset, a message naming EMBEDDED_REDIS_PORT when it is set and taken."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import redis

from tests.ports import free_port
from tests.waiting import wait_until
from webapp.embedded_redis import DEFAULT_PORT, PortUnavailable, choose_port


def start(var, port) -> subprocess.Popen:
    env = {**os.environ, "LORA_STUDIO_VAR": str(var), "EMBEDDED_REDIS_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "webapp.embedded_redis"], env=env, stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        wait_until(
            client.ping,
            timeout=5,
            interval=0.05,
            what="the embedded redis to answer a ping",
            ignore=(redis.ConnectionError,),
        )
    except AssertionError:
        proc.kill()
        raise
    return proc


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_queued_message_survives_a_restart(tmp_path, how):
    port = free_port()
    proc = start(tmp_path, port)
    try:
        redis.Redis(port=port).lpush("train", b'{"task": "training.job_run", "args": ["job-1"]}')
        time.sleep(1.5)  # appendfsync everysec: a kill -9 loses at most the last second
        proc.send_signal(how)
        proc.wait(timeout=10)
        proc = start(tmp_path, port)
        assert redis.Redis(port=port).lrange("train", 0, -1) == [b'{"task": "training.job_run", "args": ["job-1"]}']
        assert any((tmp_path / "redis").rglob("*.aof*")), "the append-only file lives under var/redis"
    finally:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def held(port: int):
    """A listening socket on 127.0.0.1:port for the block (the port may already be held by someone else)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            sock.listen()
        yield
    finally:
        sock.close()


def choose_port_cli(**env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "EMBEDDED_REDIS_PORT"}
    return subprocess.run(
        [sys.executable, "-m", "webapp.embedded_redis", "--choose-port"],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_taken_default_port_gives_way_to_a_free_one():
    port = free_port()
    assert choose_port({}, default=port) == port
    with held(port):
        other = choose_port({}, default=port)
        assert other != port and 0 < other < 65536
    with held(DEFAULT_PORT):  # what `make run` runs before it starts every process with the port it prints
        answer = choose_port_cli()
    assert answer.returncode == 0, answer.stderr
    assert int(answer.stdout) != DEFAULT_PORT and f"Port {DEFAULT_PORT} is taken" in answer.stderr


def test_an_explicit_port_that_is_taken_is_refused_naming_the_variable():
    port = free_port()
    assert choose_port({"EMBEDDED_REDIS_PORT": str(port)}) == port
    with held(port):
        with pytest.raises(PortUnavailable, match=f"EMBEDDED_REDIS_PORT={port} is in use"):
            choose_port({"EMBEDDED_REDIS_PORT": str(port)})
        answer = choose_port_cli(EMBEDDED_REDIS_PORT=str(port))
    assert answer.returncode == 2 and answer.stdout == ""
    assert f"EMBEDDED_REDIS_PORT={port} is in use by another program" in answer.stderr
    assert "Traceback" not in answer.stderr
    with pytest.raises(PortUnavailable, match="EMBEDDED_REDIS_PORT must be a port number"):
        choose_port({"EMBEDDED_REDIS_PORT": "redis"})
