"""The embedded Redis keeps its data in var/redis: a queued message survives a stop and start of
`make run` (SIGTERM) and even a kill -9 a moment after it was written."""

import os
import signal
import subprocess
import sys
import time

import pytest
import redis

from tests.integration.stack import free_port
from tests.waiting import wait_until


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
