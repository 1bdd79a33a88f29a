"""The live train workers. Each announces, when it starts, what it has (device kind, count, memory per
device) and the job it is running, in a Redis key it renews every WORKER_HEARTBEAT_SECONDS and that
expires three beats after its last renewal: a worker killed outright disappears within that time, one
that shuts down cleanly at once. The announcements feed the Workers page and the reason a queued job
waits; no job needs one to start: a free worker claims from the database (jobs.training.tasks.job_run), and
`wake_train_workers` tells the idle ones to look."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from functools import lru_cache

import redis
from celery.signals import celeryd_after_setup, worker_ready, worker_shutting_down
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from jobs.common import queue
from jobs.common.events import redis_client
from jobs.training.routing import Capacity

log = logging.getLogger(__name__)
KEY_PREFIX = "train-worker:"
TRAIN_QUEUE = "train"  # the one queue of train workers: it carries wake-ups, never a job
MIB = 2**20
# This process's announcement once it is a train worker (name set); the current job changes as it runs.
_me: dict = {"name": None, "job": None, "started": None}
_beating = threading.Event()


def parse_capacity(raw: str) -> Capacity:
    """WORKER_CAPACITY's JSON, e.g. {"device": "cuda", "count": 2, "memory_mb": 81920}."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise ImproperlyConfigured(
            f'WORKER_CAPACITY must be JSON such as {{"device": "cpu", "count": 1, "memory_mb": 4000}}, got {raw!r}'
        ) from None
    if not isinstance(data, dict) or set(data) - {"device", "count", "memory_mb"}:
        raise ImproperlyConfigured("WORKER_CAPACITY: an object with device, count and memory_mb only")
    device, count, memory = data.get("device", "cpu"), data.get("count", 1), data.get("memory_mb")
    if device not in ("cpu", "cuda"):
        raise ImproperlyConfigured(f"WORKER_CAPACITY.device must be cpu or cuda, got {device!r}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ImproperlyConfigured(f"WORKER_CAPACITY.count must be a whole number >= 1, got {count!r}")
    if not isinstance(memory, (int, float)) or isinstance(memory, bool) or memory <= 0:
        raise ImproperlyConfigured(f"WORKER_CAPACITY.memory_mb must be a number > 0, got {memory!r}")
    return Capacity(device=device, count=count, memory_mb=float(memory))


@lru_cache(maxsize=1)
def _hardware() -> Capacity:
    """The devices this machine trains on: the GPUs (memory of the smallest) or the CPU with its RAM."""
    if settings.TRAIN_DEVICE != "cpu":
        import torch

        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            memory = min(torch.cuda.get_device_properties(i).total_memory for i in range(count))
            return Capacity(device="cuda", count=count, memory_mb=memory / MIB)
    return Capacity(device="cpu", count=1, memory_mb=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MIB)


def own_capacity() -> Capacity:
    """What this process trains with: WORKER_CAPACITY if set, else the hardware, with its memory capped
    by TRAIN_MEMORY_LIMIT_MB when that is set."""
    if settings.WORKER_CAPACITY:
        return parse_capacity(settings.WORKER_CAPACITY)
    found = _hardware()
    if settings.TRAIN_MEMORY_LIMIT_MB:
        return Capacity(device=found.device, count=found.count, memory_mb=float(settings.TRAIN_MEMORY_LIMIT_MB))
    return found


def _key() -> str:
    return f"{KEY_PREFIX}{_me['name']}:{os.getpid()}"


def announce() -> None:
    """Write (or renew) this worker's announcement; best effort, the next beat tries again."""
    if _me["name"] is None or not _beating.is_set():
        return
    record = {
        "name": _me["name"],
        "host": socket.gethostname(),
        "pid": os.getpid(),
        **own_capacity().as_dict(),
        "job": _me["job"],
        "started": _me["started"],
        "seen": time.time(),
    }
    try:
        redis_client().set(_key(), json.dumps(record), ex=3 * settings.WORKER_HEARTBEAT_SECONDS)
    except redis.RedisError as exc:
        log.warning("could not announce this train worker: %s", exc)


def withdraw() -> None:
    if _me["name"] is None:
        return
    _beating.clear()
    try:
        redis_client().delete(_key())
    except redis.RedisError:
        pass  # it expires on its own


def set_current_job(job_id) -> None:
    """Record (None: clear) the job this worker runs, and say so at once."""
    _me["job"] = str(job_id) if job_id else None
    announce()


def live_workers() -> list[dict]:
    """The announcements of the live train workers, by name (none when Redis cannot be read)."""
    try:
        client = redis_client()
        keys = sorted(client.scan_iter(match=f"{KEY_PREFIX}*", count=500))
        values = client.mget(keys) if keys else []
    except redis.RedisError as exc:
        log.warning("could not read the train workers: %s", exc)
        return []
    workers = []
    for value in values:
        try:
            workers.append(json.loads(value)) if value else None
        except ValueError:
            continue
    return sorted(workers, key=lambda w: (w.get("name", ""), w.get("pid", 0)))


def capacity_of(worker: dict) -> Capacity:
    return Capacity(device=worker["device"], count=int(worker["count"]), memory_mb=float(worker["memory_mb"]))


def live_capacities() -> list[tuple[str, Capacity]]:
    """(name, capacity) of every live train worker."""
    return [(w["name"], capacity_of(w)) for w in live_workers()]


def _wake_now() -> None:
    try:
        waiting = int(redis_client().llen(TRAIN_QUEUE))
        wanted = max(1, len(live_workers()))
    except redis.RedisError:
        waiting, wanted = 0, 1
    # An idle worker takes a wake-up at once, so one still waiting means every worker is busy, and each
    # looks for the next job when its own ends: top the queue up to one wake-up per live worker, no more.
    try:
        for _ in range(max(0, wanted - waiting)):
            queue.send(queue.TRAIN_JOB)
    except Exception as exc:  # noqa: BLE001 (kombu and redis raise many kinds; the next sweep wakes them)
        log.warning("could not wake the train workers now (%s); the next sweep will", exc)


def wake_train_workers() -> None:
    """Tell the idle train workers there may be a job for them, once the current transaction commits.
    Losing the wake-up only delays the start until the next sweep (SWEEP_SECONDS) wakes them again."""
    transaction.on_commit(_wake_now)


def _beat() -> None:
    while _beating.is_set():
        announce()
        time.sleep(settings.WORKER_HEARTBEAT_SECONDS)


def is_train_worker(app) -> bool:
    """Whether this Celery worker consumes the train queue."""
    return TRAIN_QUEUE in (app.amqp.queues.consume_from or {})


@celeryd_after_setup.connect
def _name_train_worker(sender, instance, **kwargs):
    if not is_train_worker(instance.app):
        return
    capacity = own_capacity()
    _me.update(name=str(sender), started=time.time())
    log.info("train worker %s: %s x%d, %.0f MB each", sender, capacity.device, capacity.count, capacity.memory_mb)


@worker_ready.connect
def _start_announcing(sender, **kwargs):
    if _me["name"] is None or _beating.is_set():
        return
    _beating.set()
    threading.Thread(target=_beat, name="worker-announce", daemon=True).start()


@worker_shutting_down.connect
def _stop_announcing(sender=None, **kwargs):
    withdraw()
