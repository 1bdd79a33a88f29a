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
    """Generate one answer (an API completion, or one side on its own), streaming through Redis."""
    return _answer_together([answer_id])[0]


@shared_task(name="jobs.tasks.chat_round", acks_late=True)
def chat_round(answer_ids: list[str]) -> list[str]:
    """Generate every answer of a comparison round in one batched call, so all sides stream at once."""
    return _answer_together(answer_ids)


def _storable(text: str) -> str:
    """Generated text without NUL characters, which PostgreSQL text columns refuse (a small or
    badly tuned model can emit them)."""
    return text.replace("\x00", "")


def _answer_adapter(answer: ChatAnswer) -> tuple[str, str] | None:
    """(name, folder) of the adapter that gives this answer, None for the base. An adapter side
    without a job of its own is an API completion of the session's job."""
    job = answer.job or (answer.session.job if answer.side == ChatAnswer.Side.ADAPTER else None)
    return None if job is None else (str(job.adapter.id), str(services.media_path(job.adapter.folder)))


def _answer_together(answer_ids: list[str]) -> list[str]:
    """Claim the pending answers among `answer_ids` (one session, one base), generate them together
    and stream each piece to the session's channel; returns a status per id."""
    claimed = [i for i in answer_ids if ChatAnswer.objects.filter(
        id=i, state=ChatAnswer.State.PENDING).update(state=ChatAnswer.State.STREAMING)]
    status = {i: "skipped" for i in answer_ids}
    if not claimed:
        return [status[i] for i in answer_ids]
    by_id = {str(a.id): a for a in ChatAnswer.objects.select_related(
        "session__job__base_model", "session__job__adapter", "session__base_model", "job__adapter", "round").filter(
        id__in=claimed)}
    answers = [by_id[str(i)] for i in claimed]
    session = answers[0].session
    base_path = session.job.base_model.path if session.job else session.base_model.path
    channel = events.chat_channel(session.id)
    metas = [selectors.answer_event_meta(a) for a in answers]
    for meta in metas:
        events.publish(channel, "start", meta)
    asked_at = min(a.created for a in answers).timestamp()

    def stop_asked() -> bool:
        stop = events.chat_stop_time(session.id)
        return stop is not None and stop >= asked_at

    gen = GenerationConfig(**answers[0].settings)
    requests = [(_history(a), _answer_adapter(a)) for a in answers]
    try:
        texts = model_pool().generate_many(
            base_path, requests, gen, should_stop=stop_asked,
            on_text=lambda row, piece: events.publish(channel, "token", {**metas[row], "text": _storable(piece)}))
    except Exception as exc:
        log.exception("chat answers %s failed", claimed)
        ChatAnswer.objects.filter(id__in=claimed).update(state=ChatAnswer.State.FAILED,
                                                         error=f"{type(exc).__name__}: {exc}")
        for meta in metas:
            events.publish(channel, "error", {**meta, "error": "generation failed; see the worker log"})
        status.update({str(i): "failed" for i in claimed})
        return [status[i] for i in answer_ids]
    stopped = stop_asked()
    for answer, meta, text in zip(answers, metas, map(_storable, texts)):
        ChatAnswer.objects.filter(id=answer.id).update(state=ChatAnswer.State.DONE, text=text, stopped=stopped)
        events.publish(channel, "done", {**meta, "text": text, "stopped": stopped})
        status[str(answer.id)] = "stopped" if stopped else "done"
    return [status[i] for i in answer_ids]


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
