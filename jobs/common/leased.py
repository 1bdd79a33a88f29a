"""Long work kept in a row (an export, a benchmark run, a judgement): a run claims the row with a fresh token and
a lease on the database's clock, a heartbeat renews the lease while it works, every write it makes is fenced by
the token, and a sweep finds the rows whose lease ran out (their worker died or the message was lost) and queues
them again, until the attempts are used up. The same rules as a training job's claim (jobs.training.claims),
for rows with the fields `status`, `claim`, `lease_until`, `attempts`, `error` and `finished`."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections, connection
from django.db.models import DateTimeField, ExpressionWrapper, F, Model, Q, QuerySet
from django.db.models.functions import Now

from jobs.common.errors import failure_category
from worker.errors import StudioError

log = logging.getLogger(__name__)
QUEUED, RUNNING, FAILED = "queued", "running", "failed"


def lease_from_now(seconds: int) -> ExpressionWrapper:
    """`now + seconds` computed by the database, so the workers' clocks never matter."""
    return ExpressionWrapper(Now() + dt.timedelta(seconds=seconds), output_field=DateTimeField())


@contextmanager
def lease_heartbeat(renew: Callable[[], bool], every_s: float, *, what: str = "export"):
    """Call `renew` every `every_s` seconds from a thread while the block runs (until it returns False: the claim
    is gone), so a sweep can tell live long work (an export, a judgement) from work whose worker died."""
    stop = threading.Event()

    def beat():
        try:
            while not stop.wait(every_s):
                try:
                    if not renew():
                        return
                except Exception:  # a database hiccup: try again at the next beat, the lease has slack
                    log.warning("%s: lease renewal failed", what, exc_info=True)
                    close_old_connections()
        finally:
            connection.close()

    thread = threading.Thread(target=beat, name=f"{what}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@dataclass(frozen=True)
class LeasedRows:
    """The claim, renewal, end and recovery of one kind of long-work row. `lease_seconds` is read at each call
    (a setting, or a constant); `takeable` narrows which rows a run may claim (e.g. not one being cancelled)."""

    model: type[Model]
    lease_seconds: Callable[[], int]
    max_attempts: int = 3
    takeable: Q = Q()
    running: str = RUNNING  # the model's word for it (OpenAI's eval runs say "in_progress")

    @property
    def pending(self) -> tuple[str, str]:
        return (QUEUED, self.running)

    def claim(self, row_id: Any) -> str | None:
        """Take the row for this run (queued, or running on a worker whose lease ran out), counting an attempt;
        the token, or None when another run holds it, nothing is pending, or the attempts are used up."""
        token = uuid.uuid4().hex
        free = Q(status=QUEUED) | Q(status=self.running, lease_until__lt=Now())
        taken = self.model._default_manager.filter(
            free, self.takeable, id=row_id, attempts__lt=self.max_attempts
        ).update(status=self.running, claim=token, attempts=F("attempts") + 1, lease_until=self.lease())
        return token if taken == 1 else None

    def held(self, row_id: Any, token: str) -> QuerySet:
        """The row while this run's claim holds it (empty once it is gone: cancelled, or taken over)."""
        return self.model._default_manager.filter(id=row_id, claim=token, status=self.running)

    def renew(self, row_id: Any, token: str, **fields: Any) -> bool:
        """Push the lease on (and write `fields`); False once the claim is gone."""
        return self.held(row_id, token).update(lease_until=self.lease(), **fields) == 1

    def finish(self, row_id: Any, token: str, status: str, **fields: Any) -> bool:
        """End the run that holds the claim with `status` (its result in `fields`)."""
        return self.held(row_id, token).update(status=status, claim="", lease_until=None, finished=Now(), **fields) == 1

    def end(self, row_id: Any, message: str, *, token: str | None = None, status: str = FAILED) -> bool:
        """End a pending row as failed with `message` (or `status`, e.g. cancelled), fenced by `token` when a run
        holds it."""
        rows = self.model._default_manager.filter(id=row_id, status__in=self.pending)
        if token is not None:
            rows = rows.filter(claim=token)
        return rows.update(status=status, claim="", lease_until=None, error=message[:2000], finished=Now()) == 1

    def stale(self) -> QuerySet:
        """Pending rows whose lease ran out: the message was lost, or the worker died mid-run."""
        return self.model._default_manager.filter(status__in=self.pending, lease_until__lt=Now())

    def requeue(self, row: Any, attempts: int) -> bool:
        """Queue a stale row again with `attempts` and a fresh lease, unless someone changed it meanwhile."""
        return (
            self.model._default_manager.filter(
                id=row.id, status=row.status, attempts=row.attempts, lease_until=row.lease_until
            ).update(status=QUEUED, attempts=attempts, claim="", lease_until=self.lease())
            == 1
        )

    def requeue_stale(self, rows: Any, *, send: Callable[[Any], object], give_up: Callable[[Any], object]) -> int:
        """Queue each stale row again (`send` its message) with an attempt counted for a lost message (a run that
        died counted its own as it claimed the row), or `give_up` on it past `max_attempts`; how many went back.
        Re-queueing renews the lease, so a second sweep at once does nothing."""
        count = 0
        for row in rows:
            attempts = row.attempts + (0 if row.status == self.running else 1)
            if attempts >= self.max_attempts:
                give_up(row)
            elif self.requeue(row, attempts):
                send(row)
                count += 1
        return count

    def work_claimed(
        self, row: Any, work: Callable[[Any, str], str], *, share: AbstractContextManager, what: str, failed_as: str
    ) -> str:
        """A task's body for one row: give up past `max_attempts`, claim the row inside the owner's `share`, run
        `work(row, token)` with the lease kept by a heartbeat, and end the row failed, saying why, if it raises
        ("the {failed_as} failed: ..."). Its result, or "in progress" when another run holds the row."""
        if row.attempts >= self.max_attempts and row.status == QUEUED:
            self.end(row.id, f"gave up after {self.max_attempts} attempts (the worker stopped each time)")
            return "failed"
        with share:  # before the claim: a full share sends the message again later
            token = self.claim(row.id)
            if token is None:
                return "in progress"
            try:
                renew = lambda: self.renew(row.id, token)  # noqa: E731
                with lease_heartbeat(renew, every_s=self.lease_seconds() / 4, what=what):
                    return work(row, token)
            except Exception as exc:
                log.exception("%s %s failed", what, row.id)
                reason = exc.message if isinstance(exc, StudioError) else failure_category(exc)
                self.end(row.id, f"the {failed_as} failed: {reason}", token=token)
                return "failed"

    def lease(self) -> ExpressionWrapper:
        """A fresh lease's end, on the database's clock."""
        return lease_from_now(self.lease_seconds())
