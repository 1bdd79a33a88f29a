"""Slots for capped child processes started during requests (upload checks, grader runs): each child takes a
slot, at most `per_user` per user and `total` across every web process and thread; beyond, the request is
refused with `Busy` (429 with Retry-After).

The slots are members of two sorted sets in Redis (one per user, one for all) scored by their expiry on Redis's
clock, taken and counted in one script: a process killed while it holds a slot leaks it only until `seconds`
have passed. Without Redis the slots are counted in this process alone (logged)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from jobs.common.events import redis_client
from jobs.common.exceptions import Busy

log = logging.getLogger(__name__)

# KEYS: the user's set, the set of all. ARGV: token, per-user cap, total cap, seconds. 1 when taken, else 0 (the
# user's cap) or -1 (the total).
_TAKE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return -1 end
local expires = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], expires, ARGV[1])
redis.call('ZADD', KEYS[2], expires, ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

_local_lock = threading.Lock()
_local_held: dict[str, int] = {}  # without Redis: slots held in this process, per user key and per total key


@dataclass(frozen=True)
class SlotCaps:
    """One kind of child: its Redis keys, caps, how long a slot lives, and the two refusals in plain words."""

    user_key: str
    total_key: str
    per_user: int
    total: int
    seconds: int
    user_busy: str
    all_busy: str
    retry_after: int = 5


@contextmanager
def child_slot(caps: SlotCaps) -> Iterator[None]:
    """Hold one slot while the block runs; Busy (429) naming the cap when none is free."""
    token = uuid.uuid4().hex
    client = redis_client()
    try:
        taken = client.eval(_TAKE, 2, caps.user_key, caps.total_key, token, caps.per_user, caps.total, caps.seconds)
    except redis.RedisError as exc:
        log.warning("%s counted in this process only, Redis is unreachable: %s", caps.total_key, exc)
        taken = _take_local(caps)
    if taken in (0, -1):
        raise Busy(caps.user_busy if taken == 0 else caps.all_busy, retry_after=caps.retry_after)
    try:
        yield
    finally:
        if taken == "local":
            _give_local(caps)
        else:
            try:
                client.zrem(caps.user_key, token)
                client.zrem(caps.total_key, token)
            except redis.RedisError as exc:  # the slot expires on its own
                log.warning("could not give back slot %s of %s: %s", token, caps.total_key, exc)


def _take_local(caps: SlotCaps) -> str | int:
    with _local_lock:
        if _local_held.get(caps.user_key, 0) >= caps.per_user:
            return 0
        if _local_held.get(caps.total_key, 0) >= caps.total:
            return -1
        for k in (caps.user_key, caps.total_key):
            _local_held[k] = _local_held.get(k, 0) + 1
    return "local"


def _give_local(caps: SlotCaps) -> None:
    with _local_lock:
        for k in (caps.user_key, caps.total_key):
            _local_held[k] -= 1
