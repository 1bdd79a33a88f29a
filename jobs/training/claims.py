"""One worker per job, provably. A worker run takes a job with a fresh claim token and a lease on the
database's clock; a heartbeat thread renews the lease every third of its length through every phase
(setup, evaluation and save included); every write the run makes for the job is fenced by the token,
and a run that finds its claim gone stops at once (`WorkLost`) without touching anything else.

A lease runs out only when its worker died: the sweep (`record_crash`) then counts a crash and queues
the job again, so attempts count crashes, never pauses or resumes."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection, transaction
from django.db.models import F, Max, QuerySet, Sum
from django.db.models.functions import Coalesce, Greatest, Now
from django.utils import timezone

from jobs.accounts.limits import user_limits
from jobs.common.leased import lease_from_now
from jobs.training.models import FineTuneJob, JobStatus
from jobs.training.routing import Capacity, job_devices
from worker.reporting import WorkLost

log = logging.getLogger(__name__)
T = TypeVar("T")


def with_db_retry(write: Callable[[], T], *, seconds: float) -> T:
    """Run `write`; if the database connection dropped, reconnect and try again for up to `seconds`
    (inside an outer transaction nothing can be retried, so the error goes up at once)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError) as exc:
            if connection.in_atomic_block or time.monotonic() > deadline:
                raise
            log.warning("database unavailable (%s); retrying", exc)
            connection.close()
            time.sleep(0.5)


class Claim:
    """A worker run's hold on one job."""

    def __init__(self, job_id, token: str, lease_seconds: int):
        self.job_id, self.token, self.lease_seconds = job_id, token, lease_seconds
        self.lost = threading.Event()

    @classmethod
    def take(cls, job_id, *, lease_seconds: int | None = None) -> Claim | None:
        """Claim a queued job for this run, or None if another run has it or it is not queued."""
        lease_seconds = lease_seconds or settings.JOB_LEASE_SECONDS
        token = uuid.uuid4().hex
        taken = FineTuneJob.objects.filter(id=job_id, status=JobStatus.QUEUED).update(
            status=JobStatus.RUNNING,
            claim=token,
            worker=f"{socket.gethostname()}:{os.getpid()}"[:200],
            lease_until=lease_from_now(lease_seconds),
            started=Coalesce(F("started"), Now()),
            run_started=Now(),
            attempts=Greatest(F("attempts"), 1),
        )
        return cls(job_id, token, lease_seconds) if taken == 1 else None

    def retry(self, write: Callable[[], T]) -> T:
        """`write` through a dropped database connection, for up to half the lease."""
        return with_db_retry(write, seconds=self.lease_seconds / 2)

    @classmethod
    def take_fairest(cls, preferred_job_id=None, *, capacity: Capacity | None = None) -> Claim | None:
        """Claim the queued job whose turn it is (see `fair_order`) among those that fit `capacity`
        (this worker's devices and memory); `preferred_job_id` wins a tie of equal creation times."""
        for job_id in fair_order(preferred_job_id, capacity=capacity):
            claim = cls.take(job_id)
            if claim is not None:
                return claim
        return None

    def rows(self) -> QuerySet[FineTuneJob]:
        """The job row, as long as this run still owns it."""
        return FineTuneJob.objects.filter(id=self.job_id, claim=self.token, status=JobStatus.RUNNING)

    def renew(self, **fields) -> None:
        """Push the lease on (and write `fields`) under the claim; WorkLost if the claim is gone."""
        if self.lost.is_set() or not self.rows().update(lease_until=lease_from_now(self.lease_seconds), **fields):
            self.lost.set()
            raise WorkLost(f"job {self.job_id} is no longer claimed by this worker")

    def check(self) -> None:
        """WorkLost unless this run still owns the job."""
        if self.lost.is_set() or not self.rows().exists():
            self.lost.set()
            raise WorkLost(f"job {self.job_id} is no longer claimed by this worker")

    @contextmanager
    def heartbeat(self):
        """Renew the lease every third of its length from a thread, whatever the run is doing."""
        done = threading.Event()

        def beat():
            try:
                while not done.wait(self.lease_seconds / 3):
                    try:
                        self.renew()
                    except WorkLost:
                        log.warning("job %s: claim lost; this run stops", self.job_id)
                        return
                    except Exception:  # a database hiccup: try again at the next beat, the lease has slack
                        log.warning("job %s: lease renewal failed", self.job_id, exc_info=True)
                        close_old_connections()
            finally:
                connection.close()

        thread = threading.Thread(target=beat, name=f"lease-{self.job_id}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            done.set()
            thread.join(timeout=5)


def compute_seconds_today(*, owner) -> float:
    """Training time of the owner's jobs that ran today (UTC), the running ones up to now."""
    now = timezone.now()
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    ran = FineTuneJob.objects.filter(owner=owner, run_started__gte=day_start)
    done = ran.exclude(status=JobStatus.RUNNING).aggregate(total=Sum("run_seconds"))["total"] or 0.0
    live = sum(
        job.run_seconds + (now - job.run_started).total_seconds()
        for job in ran.filter(status=JobStatus.RUNNING).only("run_seconds", "run_started")
        if job.run_started is not None
    )  # (every one: the filter's run_started__gte)
    return done + live


def compute_spent(owner) -> int | None:
    """The owner's daily training time allowed (QUOTA_COMPUTE_SECONDS_PER_DAY) when today's is used up, else None:
    their queued jobs wait and a running one pauses (jobs.training.tasks)."""
    allowed = user_limits(owner).compute_seconds_per_day
    return allowed if compute_seconds_today(owner=owner) >= allowed else None


def fair_order(preferred_job_id=None, *, capacity: Capacity | None = None) -> list:
    """Queued jobs in the order they should start, fair across users: the owner with the fewest running
    jobs first, then the one whose last run began longest ago (never first); an owner at their
    running-jobs limit, or whose daily training time is used up, waits. Within one owner, the oldest first; the preferred job only
    breaks a tie of equal creation times. With `capacity`, only the jobs that fit it (jobs.training.routing):
    this order is the train queue, which a free train worker takes from (jobs.training.tasks.job_run)."""
    waiting = FineTuneJob.objects.filter(status=JobStatus.QUEUED).select_related("owner").order_by("created")
    queued: list[FineTuneJob]
    if capacity is not None:
        fitting = waiting.filter(memory_mb__lte=capacity.memory_mb).only("id", "owner", "created", "config")
        queued = [job for job in fitting if job_devices(job.config) <= capacity.max_devices]
    else:
        queued = list(waiting.only("id", "owner", "created"))
    owners = {job.owner_id: job.owner for job in queued}
    running = Counter(
        FineTuneJob.objects.filter(status=JobStatus.RUNNING, owner_id__in=owners).values_list("owner_id", flat=True)
    )
    last_run = dict(
        FineTuneJob.objects.filter(owner_id__in=owners, run_started__isnull=False)
        .values("owner_id")
        .annotate(last=Max("run_started"))
        .values_list("owner_id", "last")
    )
    allowed = {owner_id: user_limits(owner).running_jobs for owner_id, owner in owners.items()}
    oldest = dt.datetime.min.replace(tzinfo=dt.UTC)
    spent = {owner_id for owner_id, owner in owners.items() if compute_spent(owner) is not None}
    eligible = [job for job in queued if running[job.owner_id] < allowed[job.owner_id] and job.owner_id not in spent]
    eligible.sort(
        key=lambda job: (
            running[job.owner_id],
            last_run.get(job.owner_id) or oldest,
            job.created,
            str(job.id) != str(preferred_job_id),
        )
    )
    return [job.id for job in eligible]


def expired_running_jobs() -> QuerySet[FineTuneJob]:
    """Running jobs whose lease ran out on the database's clock: their worker died."""
    return FineTuneJob.objects.filter(status=JobStatus.RUNNING, lease_until__lt=Now())


def record_crash(job_id) -> str | None:
    """A running job whose lease ran out: count the crash and queue it again (or give up after
    JOB_MAX_ATTEMPTS crashes). Returns the new status, or None if the job was not expired after all."""
    with transaction.atomic():
        job = expired_running_jobs().select_for_update().filter(id=job_id).first()
        if job is None:
            return None
        crashes = [*job.crashes, dt.datetime.now(dt.UTC).isoformat(timespec="seconds")]
        if len(crashes) >= settings.JOB_MAX_ATTEMPTS:
            when = ", ".join(c.replace("T", " ").replace("+00:00", " UTC") for c in crashes)
            FineTuneJob.objects.filter(id=job.id).update(
                status=JobStatus.FAILED,
                claim="",
                lease_until=None,
                crashes=crashes,
                attempts=F("attempts") + 1,
                error_code="worker_lost",
                finished=Now(),
                error=f"gave up after {len(crashes)} crashes of the train worker (at {when})",
            )
            return JobStatus.FAILED
        FineTuneJob.objects.filter(id=job.id).update(
            status=JobStatus.QUEUED, claim="", lease_until=None, crashes=crashes, attempts=F("attempts") + 1
        )
        return JobStatus.QUEUED
