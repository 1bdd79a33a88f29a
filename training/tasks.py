"""Celery tasks of the train queue (and the merged export on the infer queue). They take ids,
re-read rows, and claim work with filter(...).update(...) == 1."""
from __future__ import annotations

import logging
import threading

from celery import shared_task
from celery.signals import worker_ready, worker_shutting_down
from django.conf import settings

from common import queue
from common.storage import media_path
from training import services
from training.claims import Claim, expired_running_jobs, record_crash
from training.dispatch import dispatch_job, is_dispatched, mark_claimed
from training.files import MERGE_MARKER, job_output_dir, merged_zip_path
from training.live import publish_status
from training.models import FineTuneJob, JobStatus
from training.reporting import DbReporter
from worker.config import ConfigError, TrainConfig, TrainSpec
from worker.data.problems import DatasetError
from worker.engine import TrainingError, train
from worker.export import merge_adapter, zip_folder
from worker.reporting import WorkLost

log = logging.getLogger(__name__)
_shutting_down = threading.Event()  # set by a warm shutdown of this worker process


def build_train_spec(job: FineTuneJob) -> TrainSpec:
    data = job_output_dir(job) / "data"
    eval_file = data / "eval.jsonl"
    return TrainSpec(
        base_model_path=job.base_model.path,
        dataset_path=str(data / "train.jsonl"),
        output_dir=str(job_output_dir(job)),
        config=TrainConfig.from_dict(job.config),
        eval_dataset_path=str(eval_file) if eval_file.exists() else None,
        device=settings.TRAIN_DEVICE,
    )


@shared_task(name=queue.TRAIN_JOB, acks_late=True, reject_on_worker_lost=True)
def job_run(job_id: str) -> str:
    """Train one job on this worker: claim it, keep the lease alive, fence every write by the claim.
    Stops cooperatively through the job row's stop_requested flag, or when this worker shuts down."""
    claim = Claim.take(job_id)
    if claim is None:
        log.info("job %s not claimable (already taken or finished)", job_id)
        return "skipped"
    mark_claimed(job_id)
    job = FineTuneJob.objects.select_related("base_model", "dataset").get(id=job_id)
    publish_status(job)
    if settings.TRAIN_THREADS:
        import torch

        torch.set_num_threads(settings.TRAIN_THREADS)
    try:
        with claim.heartbeat():
            return _train_claimed(job, claim)
    except WorkLost:
        log.warning("job %s: another worker owns it now; this run wrote nothing more", job_id)
        return "lost"


def _should_stop(claim: Claim):
    """The engine's stop check: the user's cancel or pause, a pause for this worker's shutdown, or
    WorkLost when the claim is gone."""
    def should_stop():
        if claim.lost.is_set():
            raise WorkLost(f"job {claim.job_id} is no longer claimed by this worker")
        request = claim.retry(lambda: claim.rows().values_list("stop_requested", flat=True).first())
        if request is None:
            claim.check()  # raises WorkLost
        return request or ("pause" if _shutting_down.is_set() else None)

    return should_stop


def _train_claimed(job: FineTuneJob, claim: Claim) -> str:
    def mark(**fields):
        claim.retry(lambda: services.job_mark(job_id=job.id, claim=claim.token, **fields))

    try:
        result = train(build_train_spec(job), DbReporter(claim), _should_stop(claim))
    except TrainingError as exc:
        mark(status=JobStatus.FAILED, error=str(exc), error_code=exc.code)
        return "failed"
    except (ConfigError, DatasetError) as exc:
        mark(status=JobStatus.FAILED, error=str(exc),
             error_code="config_error" if isinstance(exc, ConfigError) else "dataset_error")
        return "failed"
    except WorkLost:
        raise
    except Exception as exc:  # an engine bug must still end the job with a readable reason
        log.exception("job %s crashed", job.id)
        mark(status=JobStatus.FAILED, error_code="internal_error",
             error=f"training stopped by an internal error ({type(exc).__name__}: {exc})")
        return "failed"
    if result.status == "succeeded":
        job.refresh_from_db()
        claim.check()
        services.adapter_create(job=job, result=result)
        mark(status=JobStatus.SUCCEEDED, final_loss=result.final_loss, step=result.steps_done,
             total_steps=result.total_steps)
    elif result.status == "paused" and _shutting_down.is_set():
        mark(status=JobStatus.QUEUED)
        services.job_event(job_id=job.id, kind="pause", message=f"paused at step {result.steps_done} because the "
                           "train worker is shutting down; it resumes from there when a train worker starts")
        dispatch_job(job.id)
        return "requeued"
    elif result.status == "paused":
        mark(status=JobStatus.PAUSED)
    else:
        mark(status=JobStatus.CANCELLED)
    return result.status


@shared_task(name=queue.MERGE_ADAPTER, acks_late=True)
def adapter_merge(job_id: str) -> str:
    """Write the merged model (base + B A) as safetensors and zip it for download."""
    job = FineTuneJob.objects.select_related("base_model", "adapter").get(id=job_id)
    out = job_output_dir(job)
    try:
        folder = merge_adapter(job.base_model.path, media_path(job.adapter.folder), out / "merged")
        zip_folder(folder, merged_zip_path(job))
        note = "merged model ready" + (" (QLoRA adapter merged into the 16-bit base)" if job.config.get("qlora") else "")
        services.job_event(job_id=job.id, kind="export", message=note)
        return "ready"
    except Exception as exc:
        log.exception("merge of job %s failed", job_id)
        services.job_event(job_id=job.id, kind="error", message=f"merged export failed ({type(exc).__name__}: {exc})")
        return "failed"
    finally:
        (out / MERGE_MARKER).unlink(missing_ok=True)


@shared_task(name=queue.SWEEP_JOBS)
def sweep_jobs() -> dict[str, int]:
    """Put stranded jobs back on track: a running job whose lease ran out (its worker died) counts a crash
    and is queued again; a queued job whose message is gone is sent again. Safe to run anywhere, often."""
    crashed = 0
    for job_id in expired_running_jobs().values_list("id", flat=True):
        if record_crash(job_id) is not None:
            crashed += 1
            job = FineTuneJob.objects.get(id=job_id)
            publish_status(job)
            services.job_event(job_id=job_id, kind="warning", message=f"the train worker stopped at step {job.step}; "
                               + ("gave up" if job.status == JobStatus.FAILED else "the job is queued again"))
    resent = 0
    for job_id in FineTuneJob.objects.filter(status=JobStatus.QUEUED).values_list("id", flat=True):
        if not is_dispatched(job_id):
            dispatch_job(job_id)
            resent += 1
    if crashed or resent:
        log.info("sweep: %d crashed job(s) requeued, %d lost message(s) resent", crashed, resent)
    return {"crashed": crashed, "resent": resent}


@worker_ready.connect
def _on_worker_ready(sender, **kwargs):
    """When a train worker starts, pick up what a crash or a broker restart left behind at once."""
    consuming = sender.app.amqp.queues.consume_from or {}
    if "train" in consuming:
        sweep_jobs()


@worker_shutting_down.connect
def _on_worker_shutting_down(sender=None, **kwargs):
    """A warm shutdown (Ctrl-C of `make run`, SIGTERM): the running job pauses at a checkpoint."""
    _shutting_down.set()
