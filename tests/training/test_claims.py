"""One run per job: claims, leases on the database's clock, fenced writes, crashes counted apart from
pauses, the sweep, and the pause of a worker that shuts down. The engine runs in-process here; the
same paths under real killed processes are in tests/integration/test_faults.py."""

import time
from unittest import mock

import pytest
from django.utils import timezone

from jobs.training import services as job_services
from jobs.training import tasks as train_tasks
from jobs.training.claims import Claim, expired_running_jobs, record_crash
from jobs.training.models import FineTuneJob, JobEvent, JobStatus, MetricPoint
from jobs.training.plan import job_plan
from jobs.training.reporting import DbReporter
from worker.config import TrainConfig
from worker.reporting import WorkLost

FAST = dict(
    rank=4,
    alpha=8,
    dropout=0.0,
    target_preset="attention",
    learning_rate=0.01,
    batch_size=4,
    max_seq_length=64,
    warmup_ratio=0.0,
    seed=1,
    max_steps=8,
    save_every=2,
)


@pytest.fixture
def job(user, base_model, dataset):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        return job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(**FAST))
        )


def expire(job):
    FineTuneJob.objects.filter(id=job.id).update(lease_until=timezone.now() - timezone.timedelta(seconds=1))


def test_a_job_is_claimed_once_with_a_lease_on_the_database_clock(job):
    claim = Claim.take(job.id, lease_seconds=60)
    assert claim is not None and Claim.take(job.id) is None
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.claim == claim.token and job.attempts == 1
    assert 55 < (job.lease_until - timezone.now()).total_seconds() <= 61
    assert not expired_running_jobs().exists()


def test_a_run_whose_claim_was_taken_over_writes_nothing(job):
    first = Claim.take(job.id)
    expire(job)
    assert record_crash(job.id) == JobStatus.QUEUED
    second = Claim.take(job.id)
    assert second is not None and second.token != first.token
    stale = DbReporter(first)
    with pytest.raises(WorkLost):
        stale.log(5, {"loss": 1.0, "total_steps": 8})
    with pytest.raises(WorkLost):
        stale.event("info", "late")
    with pytest.raises(WorkLost):
        stale.guard()
    with pytest.raises(WorkLost):
        job_services.job_mark(job_id=job.id, status=JobStatus.SUCCEEDED, claim=first.token)
    assert not MetricPoint.objects.filter(job=job).exists() and not JobEvent.objects.filter(message="late").exists()
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.claim == second.token
    DbReporter(second).log(1, {"loss": 1.0, "total_steps": 8})  # the owner still writes
    assert MetricPoint.objects.filter(job=job).count() == 1


def test_crashes_count_and_the_give_up_says_when(job, settings):
    settings.JOB_MAX_ATTEMPTS = 3
    for crash in range(1, 4):
        assert Claim.take(job.id) is not None
        assert record_crash(job.id) is None, "a live lease is no crash"
        expire(job)
        assert record_crash(job.id) == (JobStatus.QUEUED if crash < 3 else JobStatus.FAILED)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and len(job.crashes) == 3 and job.attempts == 4
    assert job.error.startswith("gave up after 3 crashes of the train worker (at ") and job.error_code == "worker_lost"
    assert job.crashes[0][:10] in job.error


def test_pausing_and_resuming_five_times_still_succeeds(job, user):
    for _ in range(5):
        request = {"n": 0}

        def pause_soon(self, step, metrics, real=DbReporter.log, request=request):
            real(self, step, metrics)
            request["n"] += 1
            if request["n"] == 1:
                job_services.job_pause(job=FineTuneJob.objects.get(id=self.job_id), by=user)

        with mock.patch.object(DbReporter, "log", pause_soon):
            assert train_tasks.job_run(str(job.id)) == "paused"
        with mock.patch("jobs.training.tasks.job_run.delay"):
            job_services.job_resume(job=FineTuneJob.objects.get(id=job.id), by=user)
    assert train_tasks.job_run(str(job.id)) == "succeeded"
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1 and job.crashes == []
    assert list(MetricPoint.objects.filter(job=job).values_list("step", flat=True)) == list(range(1, 9))


def test_a_worker_shutting_down_pauses_its_job_and_the_next_worker_resumes_it(job):
    def shut_down_at_step_3(self, step, metrics, real=DbReporter.log):
        real(self, step, metrics)
        if step == 3:
            train_tasks._on_worker_shutting_down()

    try:
        with mock.patch.object(DbReporter, "log", shut_down_at_step_3), mock.patch("jobs.training.tasks.job_run.delay"):
            assert train_tasks.job_run(str(job.id)) == "requeued"
    finally:
        train_tasks._shutting_down.clear()
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.claim == "" and job.step == 3
    assert job.events.filter(kind="pause", message__startswith="paused at step 3 because the train worker").exists()
    assert train_tasks.job_run(str(job.id)) == "succeeded"
    job.refresh_from_db()
    assert job.attempts == 1 and job.events.filter(kind="resume", message__contains="step 3").exists()
    assert list(MetricPoint.objects.filter(job=job).values_list("step", flat=True)) == list(range(1, 9))


def test_the_sweep_requeues_a_dead_workers_job_and_wakes_the_workers(
    job, real_redis, django_capture_on_commit_callbacks
):
    """Rewritten from "... and resends lost messages" (Redis dispatch markers, removed): a queued job needs no
    message of its own, so the sweep's part is to requeue a dead worker's job and wake the workers."""
    Claim.take(job.id)
    with mock.patch("jobs.training.tasks.job_run.delay") as delay:
        with django_capture_on_commit_callbacks(execute=True):
            assert train_tasks.sweep_jobs() == {"crashed": 0, "queued": 0}
        assert delay.call_count == 0  # nothing queued: nobody to wake
        expire(job)
        with django_capture_on_commit_callbacks(execute=True):
            assert train_tasks.sweep_jobs() == {"crashed": 1, "queued": 1}
        assert delay.call_count == 1 and delay.call_args.args == ()  # a wake-up, naming no job
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and len(job.crashes) == 1 and job.attempts == 2
    assert job.events.filter(kind="warning", message__startswith="the train worker stopped").exists()
    real_redis.flushdb()  # Redis lost everything, wake-ups included: the job is still in the queue, the table
    assert train_tasks.job_run() == "succeeded"
    assert list(MetricPoint.objects.filter(job=job).values_list("step", flat=True)) == list(range(1, 9))


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_keeps_a_slow_phase_alive_and_stops_when_the_claim_is_gone(user, base_model, dataset):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(**FAST))
        )
    claim = Claim.take(job.id, lease_seconds=1)
    with claim.heartbeat():
        time.sleep(2.5)  # a setup or an evaluation longer than the lease
        assert not expired_running_jobs().exists() and not claim.lost.is_set()
        FineTuneJob.objects.filter(id=job.id).update(claim="someone-else")
        time.sleep(1)
        assert claim.lost.is_set()
    with pytest.raises(WorkLost):
        claim.check()


@pytest.mark.django_db(transaction=True)
def test_a_dropped_database_connection_is_retried_for_a_while_then_given_up():
    from django.db import OperationalError, transaction

    from jobs.training.claims import with_db_retry

    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise OperationalError("server closed the connection unexpectedly")
        return "written"

    assert with_db_retry(flaky, seconds=5) == "written" and len(calls) == 3
    with pytest.raises(OperationalError):
        with_db_retry(lambda: (_ for _ in ()).throw(OperationalError("down")), seconds=0.6)
    calls.clear()
    with transaction.atomic(), pytest.raises(OperationalError):
        with_db_retry(flaky, seconds=5)  # inside a transaction nothing can be retried
    assert len(calls) == 1


def test_every_sweep_wakes_the_workers_while_a_job_waits(job, real_redis, django_capture_on_commit_callbacks):
    """Rewritten from "a marker without its message expires" (markers removed): a wake-up taken by a worker
    that died before claiming never makes the sweep wait; each sweep wakes the workers while a job is queued,
    topping the train queue up to one wake-up per live worker (here none announced: one)."""
    with mock.patch("jobs.training.tasks.job_run.delay") as delay:
        for sweep in range(1, 3):
            with django_capture_on_commit_callbacks(execute=True):
                assert train_tasks.sweep_jobs() == {"crashed": 0, "queued": 1}
            assert delay.call_count == sweep


@pytest.mark.django_db(transaction=True)  # outside a transaction, as in a worker: with_db_retry retries only there
def test_the_stop_checks_daily_time_query_goes_through_a_dropped_connection(job):
    """The stop check asks the database for the owner's training time today: a connection cut at that moment
    (test_faults cuts them for seconds) is retried like every other write of the run, not a failed job."""
    from django.db import OperationalError

    claim = Claim.take(job.id, lease_seconds=60)
    clock = train_tasks.RunClock(0, owner=job.owner)
    answers = iter([OperationalError("server closed the connection unexpectedly"), None])

    def flaky(owner):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with mock.patch.object(train_tasks, "compute_spent", side_effect=flaky) as spent:
        assert train_tasks._should_stop(claim, clock)() is None
    assert spent.call_count == 2
