"""How many upload checks may run during requests at once: each parse child (up to DATASET_PARSE_MEMORY_MB for
DATASET_PARSE_SECONDS) takes a slot, at most PARSE_CHILDREN_PER_USER per user and PARSE_CHILDREN_TOTAL across
every web process and thread; beyond, the request is refused with `Busy` (429 with Retry-After).

The slots are members of two sorted sets in Redis (one per user, one for all) scored by their expiry on Redis's
clock, taken and counted in one script: a process killed while it holds a slot leaks it only until the child's
own time limit has passed. Without Redis the slots are counted in this process alone (logged)."""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from django.conf import settings

from jobs.common.events import redis_client
from jobs.common.exceptions import Busy

log = logging.getLogger(__name__)

TOTAL_KEY = "parse-slots:all"
RETRY_AFTER_SECONDS = 5  # a typical check ends within seconds; a client told to wait longer would wait for nothing
SLOT_MARGIN_SECONDS = 30  # beyond the child's own time limit: starting it and reading its answer

# KEYS: the user's set, the set of all. ARGV: token, per-user cap, total cap, seconds. 1 when taken, else 0.
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
_local_held: dict[str, int] = {}  # without Redis: slots held in this process, per user key and "all"


def user_key(owner) -> str:
    return f"parse-slots:user:{owner.pk}"


def _busy(per_user: bool) -> Busy:
    if per_user:
        message = (
            f"you already have {settings.PARSE_CHILDREN_PER_USER} uploads being checked; "
            f"wait for one to finish and send this one again"
        )
    else:
        message = "the server is checking as many uploads as it can at once; send this one again in a few seconds"
    return Busy(message, retry_after=RETRY_AFTER_SECONDS)


def _take_local(key: str) -> str:
    with _local_lock:
        if _local_held.get(key, 0) >= settings.PARSE_CHILDREN_PER_USER:
            raise _busy(per_user=True)
        if _local_held.get(TOTAL_KEY, 0) >= settings.PARSE_CHILDREN_TOTAL:
            raise _busy(per_user=False)
        for k in (key, TOTAL_KEY):
            _local_held[k] = _local_held.get(k, 0) + 1
    return "local"


def _give_local(key: str) -> None:
    with _local_lock:
        for k in (key, TOTAL_KEY):
            _local_held[k] -= 1


@contextmanager
def parse_slot(owner) -> Iterator[None]:
    """Hold one parse slot for `owner` while the block runs; Busy (429) when none is free."""
    key, token = user_key(owner), uuid.uuid4().hex
    seconds = math.ceil(settings.DATASET_PARSE_SECONDS) + SLOT_MARGIN_SECONDS
    client = redis_client()
    try:
        taken = client.eval(
            _TAKE, 2, key, TOTAL_KEY, token, settings.PARSE_CHILDREN_PER_USER, settings.PARSE_CHILDREN_TOTAL, seconds
        )
    except redis.RedisError as exc:
        log.warning("parse slots counted in this process only, Redis is unreachable: %s", exc)
        taken = _take_local(key)
    if taken in (0, -1):
        raise _busy(per_user=taken == 0)
    try:
        yield
    finally:
        if taken == "local":
            _give_local(key)
        else:
            try:
                client.zrem(key, token)
                client.zrem(TOTAL_KEY, token)
            except redis.RedisError as exc:  # the slot expires on its own
                log.warning("could not give back parse slot %s: %s", token, exc)
