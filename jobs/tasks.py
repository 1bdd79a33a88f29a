"""Celery tasks. They take ids, re-read rows, and claim work with filter(...).update(...) == 1."""
from __future__ import annotations

import datetime as dt
import logging
import socket

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from jobs import events, selectors, services
from jobs.models import ChatAnswer, FineTuneJob, JobStatus
from jobs.reporting import DbReporter
from worker.config import ConfigError, GenerationConfig, TrainConfig, TrainSpec
from worker.data import DatasetError

log = logging.getLogger(__name__)
_pool = None


def _claim(job_id) -> bool:
    """Take the job if it is queued, or running under an expired lease (its worker died)."""
    now = timezone.now()
    claimable = Q(status=JobStatus.QUEUED) | Q(status=JobStatus.RUNNING, lease_until__lt=now)
    return FineTuneJob.objects.filter(claimable, id=job_id).update(
        status=JobStatus.RUNNING, worker=f"{socket.gethostname()}", attempts=F("attempts") + 1,
        lease_until=now + dt.timedelta(seconds=settings.JOB_LEASE_SECONDS), started=now) == 1


def build_train_spec(job: FineTuneJob) -> TrainSpec:
    data = services.job_output_dir(job) / "data"
    eval_file = data / "eval.jsonl"
    return TrainSpec(
        base_model_path=job.base_model.path,
        dataset_path=str(data / "train.jsonl"),
        output_dir=str(services.job_output_dir(job)),
        config=TrainConfig.from_dict(job.config),
        eval_dataset_path=str(eval_file) if eval_file.exists() else None,
        device=settings.TRAIN_DEVICE,
    )


@shared_task(name="jobs.tasks.job_run", acks_late=True, reject_on_worker_lost=True)
def job_run(job_id: str) -> str:
    """Train one job on this worker; cooperative stop via the job row's stop_requested flag."""
    from worker.engine import TrainingError, train

    if not _claim(job_id):
        log.info("job %s not claimable (already taken or finished)", job_id)
        return "skipped"
    job = FineTuneJob.objects.select_related("base_model", "dataset").get(id=job_id)
    if job.attempts > settings.JOB_MAX_ATTEMPTS:
        services.job_mark(job_id=job.id, status=JobStatus.FAILED,
                          error=f"gave up after {settings.JOB_MAX_ATTEMPTS} attempts (the worker kept dying)")
        return "failed"
    services._publish_status(job)
    if settings.TRAIN_THREADS:
        import torch

        torch.set_num_threads(settings.TRAIN_THREADS)
    reporter = DbReporter(job.id, settings.JOB_LEASE_SECONDS)

    def should_stop():
        return FineTuneJob.objects.filter(id=job.id).values_list("stop_requested", flat=True).first() or None

    try:
        result = train(build_train_spec(job), reporter, should_stop)
    except (ConfigError, DatasetError, TrainingError) as exc:
        services.job_mark(job_id=job.id, status=JobStatus.FAILED, error=str(exc))
        return "failed"
    except Exception as exc:  # an engine bug must still end the job with a readable reason
        log.exception("job %s crashed", job.id)
        services.job_mark(job_id=job.id, status=JobStatus.FAILED,
                          error=f"training stopped by an internal error ({type(exc).__name__}: {exc})")
        return "failed"
    if result.status == "succeeded":
        job.refresh_from_db()
        services.adapter_create(job=job, result=result)
        services.job_mark(job_id=job.id, status=JobStatus.SUCCEEDED, final_loss=result.final_loss,
                          step=result.steps_done, total_steps=result.total_steps)
    elif result.status == "paused":
        services.job_mark(job_id=job.id, status=JobStatus.PAUSED)
    else:
        services.job_mark(job_id=job.id, status=JobStatus.CANCELLED)
    return result.status


def model_pool():
    """The infer worker's loaded models, kept for the life of the process."""
    global _pool
    if _pool is None:
        from worker.inference import ModelPool

        _pool = ModelPool(memory_budget_mb=settings.INFER_MEMORY_BUDGET_MB, device=settings.TRAIN_DEVICE,
                          max_adapters_per_base=settings.INFER_MAX_ADAPTERS_PER_BASE)
    return _pool


def _history(answer: ChatAnswer) -> list[dict[str, str]]:
    if answer.messages:  # an API completion carries its whole conversation
        return list(answer.messages)
    if answer.round is not None and answer.round.blind:  # each blind round stands alone: its columns mix models
        return [{"role": "user", "content": answer.prompt}]
    # Each model continues its own conversation in the session.
    earlier = ChatAnswer.objects.filter(session=answer.session, job=answer.job, side=answer.side,
                                        state=ChatAnswer.State.DONE, created__lt=answer.created).exclude(
        round__blind=True).order_by("created")
    messages: list[dict[str, str]] = []
    for turn in earlier:
        messages += [{"role": "user", "content": turn.prompt}, {"role": "assistant", "content": turn.text}]
    return messages + [{"role": "user", "content": answer.prompt}]


@shared_task(name="jobs.tasks.chat_answer", acks_late=True)
def chat_answer(answer_id: str) -> str:
    """Generate one side of a comparison, streaming text pieces through Redis."""
    claimed = ChatAnswer.objects.filter(id=answer_id, state=ChatAnswer.State.PENDING).update(
        state=ChatAnswer.State.STREAMING)
    if not claimed:
        return "skipped"
    answer = ChatAnswer.objects.select_related("session__job__base_model", "session__job__adapter",
                                               "session__base_model", "job__adapter", "round").get(id=answer_id)
    session_job = answer.session.job
    base_path = session_job.base_model.path if session_job else answer.session.base_model.path
    channel = events.chat_channel(answer.session_id)
    meta = selectors.answer_event_meta(answer)
    events.publish(channel, "start", meta)
    # The answer names the adapter that gives it; an adapter side without one is an API completion of
    # the session's job.
    job = answer.job or (session_job if answer.side == ChatAnswer.Side.ADAPTER else None)
    adapter = None
    if job is not None:
        adapter = (str(job.adapter.id), str(services.media_path(job.adapter.folder)))
    asked_at = answer.created.timestamp()

    def stop_asked() -> bool:
        stop = events.chat_stop_time(answer.session_id)
        return stop is not None and stop >= asked_at

    try:
        text = model_pool().generate(base_path, _history(answer), GenerationConfig(**answer.settings),
                                     adapter=adapter,
                                     on_text=lambda piece: events.publish(channel, "token", {**meta, "text": piece}),
                                     should_stop=stop_asked)
    except Exception as exc:
        log.exception("chat answer %s failed", answer_id)
        ChatAnswer.objects.filter(id=answer_id).update(state=ChatAnswer.State.FAILED,
                                                       error=f"{type(exc).__name__}: {exc}")
        events.publish(channel, "error", {**meta, "error": "generation failed; see the worker log"})
        return "failed"
    stopped = stop_asked()
    ChatAnswer.objects.filter(id=answer_id).update(state=ChatAnswer.State.DONE, text=text, stopped=stopped)
    events.publish(channel, "done", {**meta, "text": text, "stopped": stopped})
    return "stopped" if stopped else "done"


@shared_task(name="jobs.tasks.adapter_merge", acks_late=True)
def adapter_merge(job_id: str) -> str:
    """Write the merged model (base + B A) as safetensors and zip it for download."""
    from worker.export import merge_adapter, zip_folder

    job = FineTuneJob.objects.select_related("base_model", "adapter").get(id=job_id)
    out = services.job_output_dir(job)
    marker = out / "merge.pending"
    try:
        folder = merge_adapter(job.base_model.path, services.media_path(job.adapter.folder), out / "merged")
        zip_folder(folder, services.merged_zip_path(job))
        note = "merged model ready" + (" (QLoRA adapter merged into the 16-bit base)" if job.config.get("qlora") else "")
        services.job_event(job=job, kind="export", message=note)
        return "ready"
    except Exception as exc:
        log.exception("merge of job %s failed", job_id)
        services.job_event(job=job, kind="error", message=f"merged export failed ({type(exc).__name__}: {exc})")
        return "failed"
    finally:
        marker.unlink(missing_ok=True)


def requeue_orphaned_jobs() -> int:
    """Queue again the jobs whose message is gone: queued ones (an in-memory broker restarted) and
    running ones whose worker died (lease expired). Claiming makes duplicates harmless."""
    now = timezone.now()
    ids = list(FineTuneJob.objects.filter(
        Q(status=JobStatus.QUEUED) | Q(status=JobStatus.RUNNING, lease_until__lt=now)).values_list("id", flat=True))
    for job_id in ids:
        job_run.delay(str(job_id))
    return len(ids)


@worker_ready.connect
def _on_worker_ready(sender, **kwargs):
    """When a train worker starts, pick up what a crash or a broker restart left behind."""
    consuming = sender.app.amqp.queues.consume_from or {}
    if "train" in consuming:
        count = requeue_orphaned_jobs()
        if count:
            log.info("requeued %d orphaned job(s)", count)


from jobs import tasks_webhooks  # noqa: E402,F401  (registers webhook_deliver with Celery)
