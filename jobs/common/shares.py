"""Bounded shares of the background worker's threads, by kind of work and by user.

The background worker runs every slow side job (upload checks, exports, webhook deliveries, sweeps) on one pool
of threads. Left alone, one kind floods it: a user pinging an endpoint that never answers would hold every
thread for WEBHOOK_TIMEOUT_SECONDS at a time while uploads wait to be checked and the sweeps never run. So each
kind may run at most its share at once (settings.BACKGROUND_SHARES, which add up to the worker's threads: each
kind always has its share free), and deliveries and exports at most BACKGROUND_OWNER_SHARES per user within it.
Sweeps are periodic and quick: each runs once at a time, and a tick that finds the same sweep running is dropped
(their share in the sum is the thread kept free for them).

A task that finds its share full does not wait on a thread: it goes back to the broker with a short countdown
(the same message again, not counted as a retry) and its thread is free at once. The counters live in the
worker process (its threads share them); a crash frees them with the process. Eager mode (tests) runs
everything at once, unbounded.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Task, current_task
from celery.signals import celeryd_after_setup
from django.conf import settings

from jobs.common import queue

log = logging.getLogger(__name__)

BACKGROUND_QUEUE = "background"
CHECKS, EXPORTS, DELIVERIES, SWEEPS, JUDGEMENTS = "checks", "exports", "deliveries", "sweeps", "judgements"
KIND_OF_TASK = {
    queue.CHECK_UPLOAD: CHECKS,
    queue.TOKEN_PROFILE: CHECKS,
    queue.MERGE_ADAPTER: EXPORTS,
    queue.HUB_DOWNLOAD: EXPORTS,
    queue.GGUF_CONVERT: EXPORTS,
    queue.HUB_PUBLISH: EXPORTS,
    queue.JUDGEMENT_RUN: JUDGEMENTS,
    queue.EVAL_RUN: JUDGEMENTS,
    queue.BENCHMARK_RUN: EXPORTS,
    queue.WEBHOOK_DELIVER: DELIVERIES,
    queue.MLFLOW_LOG: DELIVERIES,
    queue.SWEEP_MERGES: SWEEPS,
    queue.SWEEP_WEBHOOKS: SWEEPS,
    queue.SWEEP_MLFLOW: SWEEPS,
    queue.SWEEP_JOBS: SWEEPS,
    queue.SWEEP_ANSWERS: SWEEPS,
    queue.SWEEP_JUDGEMENTS: SWEEPS,
    queue.SWEEP_BENCHMARKS: SWEEPS,
    queue.SWEEP_EVALS: SWEEPS,
    queue.SWEEP_DATASETS: SWEEPS,
    queue.SWEEP_SWEEPS: SWEEPS,
    queue.EXPIRE_FILES: SWEEPS,
    queue.EXPIRE_UPLOADS: SWEEPS,
}


class ShareFull(Exception):
    """The task's share (of its kind, or its owner's) is taken: it is sent again later, not run now."""


class Shares:
    """How many tasks of each kind, and of each (kind, owner), run now in this process; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: Counter = Counter()

    def take(self, key: tuple, limit: int) -> bool:
        """Count one more under `key` unless `limit` are running already; whether it was counted."""
        with self._lock:
            if self._running[key] >= limit:
                return False
            self._running[key] += 1
            return True

    def release(self, key: tuple) -> None:
        with self._lock:
            self._running[key] -= 1
            if self._running[key] <= 0:
                del self._running[key]

    def running(self, key: tuple) -> int:
        with self._lock:
            return self._running[key]


SHARES = Shares()


def kind_limit(kind: str) -> int:
    return settings.BACKGROUND_SHARES[kind]


@contextmanager
def owner_share(kind: str, owner_id: int | None) -> Iterator[None]:
    """Hold one of the owner's places in the kind's share for the block, or raise ShareFull (the task is then
    sent again later). Called by a task once it knows whose work it does; nothing to hold in eager mode."""
    limit = settings.BACKGROUND_OWNER_SHARES.get(kind)
    request = getattr(current_task, "request", None)  # None outside a task
    if limit is None or owner_id is None or request is None or request.is_eager:
        yield
        return
    key = (kind, owner_id)
    if not SHARES.take(key, limit):
        raise ShareFull(f"user {owner_id}'s share of {kind} ({limit}) is taken")
    try:
        yield
    finally:
        SHARES.release(key)


class SharedTask(Task):
    """The base of every task (webapp.celery's task_cls): a background task runs only within its kind's share,
    else goes back to the broker for BACKGROUND_DEFER_SECONDS. Tasks of no kind (train, chat) run as usual."""

    def __call__(self, *args, **kwargs):
        kind = KIND_OF_TASK.get(self.name)
        if kind is None or self.request.is_eager:
            return super().__call__(*args, **kwargs)
        if kind == SWEEPS:  # periodic and quick: one of each at a time, and a tick that finds it running is dropped
            return self.sweep_once(*args, **kwargs)
        key = (kind,)
        if not SHARES.take(key, kind_limit(kind)):
            return self.defer(f"the {kind} share ({kind_limit(kind)}) is taken")
        try:
            return super().__call__(*args, **kwargs)
        except ShareFull as exc:
            return self.defer(str(exc))
        finally:
            SHARES.release(key)

    def sweep_once(self, *args, **kwargs):
        """Run a sweep unless the same sweep runs already in this process; then this tick is dropped, not sent
        again: the running one does its work, and beat sends the next. No sweep message ever waits in the broker
        with a countdown (a worker holding such unacknowledged messages when the broker goes away is stopped by
        kombu's reconnect), and a pile of ticks after an outage runs each sweep once, not once per tick."""
        key = (SWEEPS, self.name)
        if not SHARES.take(key, 1):
            log.debug("%s[%s] dropped: the same sweep is running", self.name, self.request.id)
            return "skipped"
        try:
            return super().__call__(*args, **kwargs)
        finally:
            SHARES.release(key)

    def defer(self, why: str) -> str:
        """Send this same message again in BACKGROUND_DEFER_SECONDS, its retry count kept; returns "deferred"."""
        log.debug("%s[%s] deferred: %s", self.name, self.request.id, why)
        self.signature_from_request(
            countdown=settings.BACKGROUND_DEFER_SECONDS, retries=self.request.retries
        ).apply_async()
        return "deferred"


def shares_refusal(threads: int) -> str | None:
    """Why a background worker with this many threads cannot give each kind its share, or None."""
    needed = sum(settings.BACKGROUND_SHARES.values())
    if threads >= needed:
        return None
    return (
        f"the background worker runs {threads} threads but BACKGROUND_SHARES add up to {needed}: "
        f"start it with -c {needed}, or a busy kind of work can take the threads another kind needs"
    )


@celeryd_after_setup.connect
def _check_background_threads(sender, instance, **kwargs):
    if BACKGROUND_QUEUE in (instance.app.amqp.queues.consume_from or {}):
        refusal = shares_refusal(instance.concurrency)
        if refusal:
            log.error(refusal)
