"""Writes: keyword-only `<entity>_<action>` functions that validate, write in a transaction and
schedule side effects on commit."""
from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs import events
from jobs.models import (Adapter, BaseModel, ChatAnswer, ChatSession, Dataset, FineTuneJob, JobStatus,
                         MetricPoint, TERMINAL_STATUSES)
from worker.config import ConfigError, GenerationConfig, TrainConfig
from worker.data import DatasetError, Problem, file_sha256, summarize_chat_jsonl
from worker.targets import resolve_targets

log = logging.getLogger(__name__)

DEMO_DATASET = Path(settings.BASE_DIR) / "worker" / "demo_data" / "demo_dataset.jsonl"
DEMO_DATASET_NAME = "Demo: contact details to JSON"


class JobStateError(Exception):
    """The job is not in a state that allows this action."""


def media_path(relative: str) -> Path:
    return Path(settings.MEDIA_ROOT) / relative


# --- datasets ------------------------------------------------------------------------------

def _store_upload(upload, dest: Path, limit: int, filename: str) -> int:
    """Stream the upload to dest, refusing it past `limit` bytes."""
    size = 0
    with open(dest, "wb") as out:
        for chunk in upload.chunks():
            size += len(chunk)
            if size > limit:
                raise DatasetError(filename, [Problem(0, "", f"is larger than the limit of {limit // (1024 * 1024)} MB")])
            out.write(chunk)
    return size


def dataset_create(*, owner, upload, name: str = "") -> Dataset:
    """Store an uploaded JSONL chat file under an opaque id after validating every line.

    Raises DatasetError (with line-numbered problems); nothing is stored then.
    """
    filename = Path(getattr(upload, "name", "") or "upload.jsonl").name
    if not filename.lower().endswith((".jsonl", ".json", ".txt")):
        raise DatasetError(filename, [Problem(0, "", "must be a .jsonl file of chat examples (one JSON object per line)")])
    folder = media_path("datasets")
    folder.mkdir(parents=True, exist_ok=True)
    file_id = uuid.uuid4().hex
    final = folder / f"{file_id}.jsonl"
    tmp = folder / f".{file_id}.part"
    try:
        size = _store_upload(upload, tmp, settings.DATASET_MAX_BYTES, filename)
        summary = summarize_chat_jsonl(tmp, filename)
        tmp.replace(final)
        with transaction.atomic():
            return Dataset.objects.create(
                owner=owner, name=(name or filename)[:200], file=f"datasets/{file_id}.jsonl", format=summary.format,
                schema=summary.schema, rows=summary.rows, size_bytes=size, sha256=summary.sha256,
                stats={"turns": summary.turns, "chars": summary.chars, "original_name": filename},
            )
    except BaseException:
        tmp.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        raise


def dataset_create_demo(*, owner) -> Dataset:
    """The shipped demo dataset, for the user's one-click start (reused if already added)."""
    existing = Dataset.objects.filter(owner=owner, name=DEMO_DATASET_NAME).first()
    if existing:
        return existing
    with open(DEMO_DATASET, "rb") as fh:
        from django.core.files import File

        return dataset_create(owner=owner, upload=File(fh, name=DEMO_DATASET.name), name=DEMO_DATASET_NAME)


# --- base models ---------------------------------------------------------------------------

def base_model_register(*, name: str, path: str | Path) -> BaseModel:
    """Describe a local model folder (on the meta device) and record it; idempotent by name."""
    from worker.modeling import describe_model

    info = describe_model(str(path))
    model, _ = BaseModel.objects.update_or_create(
        name=name,
        defaults=dict(path=str(path), architecture=info["architecture"], parameters=info["parameters"],
                      linear_modules=info["linear_modules"], has_chat_template=info["has_chat_template"]),
    )
    return model


# --- jobs ----------------------------------------------------------------------------------

def job_validate_config(*, base_model: BaseModel, config: TrainConfig) -> list[str]:
    """Check the config against the model itself; returns the resolved target modules."""
    return resolve_targets(base_model.linear_modules, config.target_preset, config.target_modules)


def job_create(*, owner, dataset: Dataset, base_model: BaseModel, config: TrainConfig, name: str = "") -> FineTuneJob:
    """Save a queued job and hand it to the train queue once the transaction commits."""
    from jobs.tasks import job_run

    if dataset.owner_id != owner.id:
        raise ConfigError("dataset", "unknown dataset")
    job_validate_config(base_model=base_model, config=config)
    with transaction.atomic():
        job = FineTuneJob.objects.create(owner=owner, dataset=dataset, base_model=base_model,
                                         config=config.to_dict(), name=name[:200])
        transaction.on_commit(lambda: job_run.delay(str(job.id)))
    return job


def job_output_dir(job: FineTuneJob) -> Path:
    return media_path(f"jobs/{job.id}")


def _publish_status(job: FineTuneJob) -> None:
    events.publish(events.job_channel(job.id), "status",
                   {"status": job.status, "error": job.error, "step": job.step, "total_steps": job.total_steps})


def job_cancel(*, job: FineTuneJob, by) -> FineTuneJob:
    """Cancel: a queued or paused job at once, a running one at its next step (cooperative)."""
    if job.owner_id != by.id:
        raise JobStateError("not your job")
    with transaction.atomic():
        now = timezone.now()
        stopped = FineTuneJob.objects.filter(id=job.id, status__in=[JobStatus.QUEUED, JobStatus.PAUSED]).update(
            status=JobStatus.CANCELLED, finished=now, stop_requested="cancel")
        if not stopped:
            flagged = FineTuneJob.objects.filter(id=job.id, status=JobStatus.RUNNING).update(stop_requested="cancel")
            if not flagged:
                job.refresh_from_db()
                raise JobStateError(f"a {job.status} job cannot be cancelled")
    job.refresh_from_db()
    if job.status == JobStatus.CANCELLED:
        transaction.on_commit(lambda: _publish_status(job))
    else:
        events.publish(events.job_channel(job.id), "message", {"kind": "cancel", "message": "cancel requested"})
    return job


def job_mark(*, job_id, status: str, error: str = "", **fields: Any) -> FineTuneJob:
    """Record a worker-side status change and announce it."""
    values = dict(status=status, error=error, stop_requested="", lease_until=None, **fields)
    if status in TERMINAL_STATUSES:
        values["finished"] = timezone.now()
    FineTuneJob.objects.filter(id=job_id).update(**values)
    job = FineTuneJob.objects.get(id=job_id)
    _publish_status(job)
    return job


def adapter_create(*, job: FineTuneJob, result) -> Adapter:
    """Package the trained adapter: zip with tokenizer, config, metrics, dataset hash, model card."""
    from worker.export import build_adapter_zip, model_card

    out = job_output_dir(job)
    metrics = [{"step": p.step, **{k: v for k, v in p.as_event().items() if v is not None}}
               for p in MetricPoint.objects.filter(job=job).order_by("step")]
    title = job.name or f"LoRA adapter {job.short_id}"
    card = model_card(title=title, base_model=job.base_model.name, config=job.config, rows=job.dataset.rows,
                      dataset_sha256=job.dataset.sha256, steps=result.steps_done, final_loss=result.final_loss,
                      targets=result.targets)
    zip_path = out / f"adapter-{job.short_id}.zip"
    build_adapter_zip(result.adapter_dir, zip_path, card=card, config=job.config, metrics=metrics,
                      dataset_sha256=job.dataset.sha256)
    (Path(result.adapter_dir) / "README.md").write_text(card)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    root = Path(settings.MEDIA_ROOT)
    adapter, _ = Adapter.objects.update_or_create(
        job=job, defaults=dict(folder=str(Path(result.adapter_dir).relative_to(root)),
                               zip_file=str(zip_path.relative_to(root)), size_bytes=zip_path.stat().st_size,
                               sha256=file_sha256(zip_path)))
    return adapter


# --- chat ----------------------------------------------------------------------------------

def chat_ask(*, owner, job: FineTuneJob, prompt: str, generation: GenerationConfig,
             session: ChatSession | None = None) -> tuple[ChatSession, list[ChatAnswer]]:
    """Send one prompt to the base model and to the job's adapter; answers stream via the infer queue."""
    from jobs.tasks import chat_answer

    if job.owner_id != owner.id:
        raise JobStateError("not your job")
    if job.status != JobStatus.SUCCEEDED or not hasattr(job, "adapter"):
        raise JobStateError("the job has no adapter yet; compare once it has succeeded")
    prompt = prompt.strip()
    if not prompt:
        raise ConfigError("prompt", "type a message first")
    with transaction.atomic():
        if session is None:
            session = ChatSession.objects.create(owner=owner, job=job)
        answers = [ChatAnswer.objects.create(session=session, side=side, prompt=prompt,
                                             settings=generation.__dict__)
                   for side in (ChatAnswer.Side.BASE, ChatAnswer.Side.ADAPTER)]
        for answer in answers:
            transaction.on_commit(lambda a=answer: chat_answer.delay(str(a.id)))
    return session, answers
