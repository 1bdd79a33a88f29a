"""Celery tasks of the train queue (the exports' tasks, on the background queue, are in export_tasks). They take ids,
re-read rows, and claim work with filter(...).update(...) == 1.

The jobs table is the train queue. A message on the `train` queue is only a wake-up: the worker that takes
it claims the fairest queued job that fits its own capacity (Claim.take_fairest), trains it, and claims
again until none fits; then it idles until the next wake-up. Services wake the workers when a job becomes
runnable (jobs.training.workers.wake_train_workers), a worker wakes itself when it starts, and the sweep
wakes them every SWEEP_SECONDS, so a lost message delays a job by one sweep and strands none."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from celery import shared_task
from celery.signals import worker_ready, worker_shutting_down
from django.conf import settings

from jobs.common import blobs, queue
from jobs.training import (
    export_tasks,  # noqa: F401  (registers the export tasks: Celery loads `tasks` modules)
    publish_tasks,  # noqa: F401  (registers the Hub publish task)
    services,
    workers,
)
from jobs.training.claims import Claim, compute_spent, expired_running_jobs, record_crash
from jobs.training.files import RESUME_FOLDERS, job_files, job_output_dir
from jobs.training.graders import grader_limits, job_judges
from jobs.training.live import publish_status
from jobs.training.models import FineTuneJob, JobStatus
from jobs.training.reporting import DbReporter
from worker.config import TrainConfig, TrainSpec
from worker.data.problems import DatasetError
from worker.distributed import run_training
from worker.errors import InputError, TrainingError
from worker.reporting import WorkLost
from worker.warm import WarmBases

log = logging.getLogger(__name__)
_shutting_down = threading.Event()  # set by a warm shutdown of this worker process
_warm_bases: WarmBases | None = None


def warm_bases() -> WarmBases | None:
    """The base models this train worker keeps loaded between jobs (TRAIN_WARM_MODELS_MB; 0: none)."""
    global _warm_bases
    if settings.TRAIN_WARM_MODELS_MB <= 0:
        return None
    if _warm_bases is None or _warm_bases.budget_bytes != settings.TRAIN_WARM_MODELS_MB * 2**20:
        _warm_bases = WarmBases(settings.TRAIN_WARM_MODELS_MB)
    return _warm_bases


def build_train_spec(job: FineTuneJob) -> TrainSpec:
    # On a machine that has not seen the job (or after a crash elsewhere), the store brings its data
    # snapshot and the checkpoints it resumes from; the engine's checkpoints go back through DbReporter.
    for name in RESUME_FOLDERS:
        blobs.fetch(job_files(job, name))
    data = job_output_dir(job) / "data"
    eval_file = data / "eval.jsonl"
    config = TrainConfig.from_dict(job.config)
    start_dir = None
    if config.start_from:  # DPO on top of job X: X's adapter, from the store when this machine lacks it
        start = FineTuneJob.objects.filter(id=config.start_from, owner_id=job.owner_id).first()
        if start is None or not start.has_adapter:
            raise InputError("start_from", "the job this one starts from, or its adapter, has been deleted")
        start_dir = str(blobs.fetch(start.adapter.folder))
    return TrainSpec(
        base_model_path=job.base_model.local_path,
        dataset_path=str(data / "train.jsonl"),
        output_dir=str(job_output_dir(job)),
        config=config,
        eval_dataset_path=str(eval_file) if eval_file.exists() else None,
        device=settings.TRAIN_DEVICE,
        start_adapter_dir=start_dir,
        grader=job.grader,
        grader_limits=dataclasses.asdict(grader_limits()) if job.grader else None,
        grader_judges=job_judges(owner=job.owner, grader=job.grader),
    )


@shared_task(name=queue.TRAIN_JOB, acks_late=True, reject_on_worker_lost=True)
def job_run(job_id: str | None = None) -> str:
    """A wake-up of this train worker: claim the fairest queued job that fits it and train it, then the next,
    until none fits (or this worker shuts down). `job_id` only breaks a tie of equal creation times; no job
    needs a message of its own. Returns how the first run ended, or "skipped" when none was claimed.
    Each run keeps its lease alive and fences every write by its claim; it stops cooperatively through the
    job row's stop_requested flag, or when this worker shuts down."""
    first = None
    capacity = workers.own_capacity()
    while not _shutting_down.is_set():
        claim = Claim.take_fairest(preferred_job_id=job_id, capacity=capacity)
        if claim is None:
            break
        job_id = None
        workers.set_current_job(claim.job_id)
        try:
            result = _run_claimed(claim)
        finally:
            workers.set_current_job(None)
        first = first or result
        if FineTuneJob.objects.filter(status=JobStatus.QUEUED).exists():
            # The job's end may free its owner's turn for a job that fits another (idle) worker better.
            workers.wake_train_workers()
    if first is None:
        log.info("no queued job fits this train worker now (or their owners are at a limit); idle until woken")
    return first or "skipped"


def _run_claimed(claim: Claim) -> str:
    job = FineTuneJob.objects.select_related("base_model", "dataset").get(id=claim.job_id)
    publish_status(job)
    if settings.TRAIN_THREADS:
        import torch

        torch.set_num_threads(settings.TRAIN_THREADS)
    try:
        with claim.heartbeat():
            return _train_claimed(job, claim)
    except WorkLost:
        log.warning("job %s: another worker owns it now; this run wrote nothing more", claim.job_id)
        return "lost"


class RunClock:
    """How long this run (and the job's earlier runs) trained, against JOB_MAX_RUN_SECONDS."""

    def __init__(self, earlier_seconds: float, owner=None):
        self.started, self.earlier = time.monotonic(), earlier_seconds
        self.timed_out = False
        self.pruned = False  # a sweep's pruner asked this trial to stop (stop_requested "prune")
        self.owner, self.quota_checked = owner, float("-inf")
        self.quota_spent: int | None = None

    def compute_spent(self) -> int | None:
        """The owner's daily training time allowed once it is used up (asked every COMPUTE_QUOTA_CHECK_SECONDS)."""
        now = time.monotonic()
        if self.owner is not None and now - self.quota_checked >= settings.COMPUTE_QUOTA_CHECK_SECONDS:
            self.quota_checked, self.quota_spent = now, compute_spent(self.owner)
        return self.quota_spent

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def over_limit(self) -> bool:
        return self.earlier + self.elapsed() > settings.JOB_MAX_RUN_SECONDS


def _should_stop(claim: Claim, clock: RunClock):
    """The engine's stop check: the user's cancel or pause, the run-time limit, a pause when the owner's daily
    training time is used up, a pause for this worker's shutdown, a sweep's prune (a cancel to the engine, then
    the status pruned), or WorkLost when the claim is gone."""

    def should_stop():
        if claim.lost.is_set():
            raise WorkLost(f"job {claim.job_id} is no longer claimed by this worker")
        request = claim.retry(lambda: claim.rows().values_list("stop_requested", flat=True).first())
        if request is None:
            claim.check()  # raises WorkLost
        if request == "prune":
            clock.pruned = True
            return "cancel"
        if not request and clock.over_limit():
            clock.timed_out = True
            return "cancel"
        if not request and claim.retry(clock.compute_spent) is not None:  # a query: through a dropped connection too
            return "pause"
        return request or ("pause" if _shutting_down.is_set() else None)

    return should_stop


def _note_compute_pause(job: FineTuneJob, *, steps: int, allowed: int) -> None:
    services.job_event(
        job_id=job.id,
        kind="pause",
        message=f"paused at step {steps}: your daily training time ({allowed:,} s) is used up; resume it once "
        "the day (UTC) turns, or ask an administrator to raise your limit (QUOTA_COMPUTE_SECONDS_PER_DAY)",
    )


def _train_claimed(job: FineTuneJob, claim: Claim) -> str:
    clock = RunClock(job.run_seconds, owner=job.owner)

    def mark(**fields):
        run_seconds = job.run_seconds + clock.elapsed()
        claim.retry(lambda: services.job_mark(job_id=job.id, claim=claim.token, run_seconds=run_seconds, **fields))

    try:
        # devices > 1: this process supervises N rank processes and rank 0 reports here (worker.distributed)
        result = run_training(
            build_train_spec(job),
            DbReporter(claim),
            _should_stop(claim, clock),
            max_devices=settings.TRAIN_MAX_DEVICES,
            threads=settings.TRAIN_THREADS,
            timeout_s=settings.TRAIN_DIST_TIMEOUT_SECONDS,
            warm=warm_bases(),
        )
    except TrainingError as exc:
        mark(status=JobStatus.FAILED, error=str(exc), error_code=exc.code)
        return "failed"
    except (InputError, DatasetError) as exc:
        mark(
            status=JobStatus.FAILED,
            error=str(exc),
            error_code="config_error" if isinstance(exc, InputError) else "dataset_error",
        )
        return "failed"
    except WorkLost:
        raise
    except Exception:  # an engine bug must still end the job with a readable reason
        log.exception("job %s crashed", job.id)
        mark(
            status=JobStatus.FAILED,
            error_code="internal_error",
            error="training stopped by an internal error; the administrator can find it in the train "
            f"worker's log (job {job.id})",
        )
        return "failed"
    if result.status == "succeeded":
        job.refresh_from_db()
        claim.check()
        services.adapter_create(job=job, result=result)
        mark(
            status=JobStatus.SUCCEEDED,
            final_loss=result.final_loss,
            step=result.steps_done,
            total_steps=result.total_steps,
            **({"precision": result.precision} if result.precision else {}),
        )
    elif result.status == "paused" and _shutting_down.is_set():
        mark(status=JobStatus.QUEUED)
        services.job_event(
            job_id=job.id,
            kind="pause",
            message=f"paused at step {result.steps_done} because the "
            "train worker is shutting down; it resumes from there when a train worker starts",
        )
        return "requeued"  # job_run wakes the other workers
    elif result.status == "paused":
        mark(status=JobStatus.PAUSED)
        if clock.quota_spent is not None:
            _note_compute_pause(job, steps=result.steps_done, allowed=clock.quota_spent)
    elif clock.timed_out:
        limit = settings.JOB_MAX_RUN_SECONDS
        mark(
            status=JobStatus.FAILED,
            error_code="time_limit",
            error=f"stopped at step {result.steps_done}: a job may train for {limit:,} s in all "
            f"(setting JOB_MAX_RUN_SECONDS); its last checkpoint is kept, retry with fewer steps",
        )
        return "failed"
    elif clock.pruned:
        mark(status=JobStatus.PRUNED)
        return "pruned"
    else:
        mark(status=JobStatus.CANCELLED)
    return result.status


@shared_task(name=queue.SWEEP_JOBS)
def sweep_jobs() -> dict[str, int]:
    """Put stranded jobs back on track: a running job whose lease ran out (its worker died) counts a crash
    and is queued again; while jobs are queued, the idle train workers are woken (a lost wake-up costs one
    sweep). Safe to run anywhere, often."""
    crashed = 0
    for job_id in expired_running_jobs().values_list("id", flat=True):
        if record_crash(job_id) is not None:
            crashed += 1
            job = FineTuneJob.objects.get(id=job_id)
            publish_status(job)
            services.job_event(
                job_id=job_id,
                kind="warning",
                message=f"the train worker stopped at step {job.step}; "
                + ("gave up" if job.status == JobStatus.FAILED else "the job is queued again"),
            )
    queued = FineTuneJob.objects.filter(status=JobStatus.QUEUED).count()
    if queued:
        workers.wake_train_workers()
    if crashed:
        log.info("sweep: %d crashed job(s) queued again", crashed)
    return {"crashed": crashed, "queued": queued}


@worker_ready.connect
def _on_worker_ready(sender, **kwargs):
    """When a train worker starts, pick up what a crash left behind and look for a job at once (the sweep
    wakes the workers while jobs are queued; a wake-up waiting in the queue is this worker's too)."""
    if workers.is_train_worker(sender.app):
        sweep_jobs()


@worker_shutting_down.connect
def _on_worker_shutting_down(sender=None, **kwargs):
    """A warm shutdown (Ctrl-C of `make run`, SIGTERM): the running job pauses at a checkpoint."""
    _shutting_down.set()
