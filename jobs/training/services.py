"""Writes for jobs: keyword-only `<entity>_<action>` functions that validate, write in a transaction
and schedule side effects on commit (the train queue, live events, the `job_finished` signal)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from jobs.accounts.limits import check_limit, storage_used
from jobs.common import blobs, queue
from jobs.common.exceptions import StateError
from jobs.common.storage import media_relative
from jobs.training.exports import export_checked, export_forget, export_of, export_queue, export_state, merged_export_of
from jobs.training.files import export_zip_name, job_evaluation, job_files, job_output_dir, job_storage_record
from jobs.training.live import publish_job, publish_status
from jobs.training.models import (
    TERMINAL_STATUSES,
    Adapter,
    ExportFormat,
    FineTuneJob,
    JobEvent,
    JobExport,
    JobStatus,
    MetricPoint,
)
from jobs.training.plan import JobPlan, job_check_quotas, job_plan
from jobs.training.selectors import job_serving_recipes
from jobs.training.signals import job_finished
from jobs.training.workers import wake_train_workers
from worker.config import TrainConfig, preset_of
from worker.data.loading import file_sha256
from worker.data.normalized import copy_normalized_lines
from worker.errors import InputError
from worker.evaluation import summary_markdown
from worker.export import build_adapter_zip, model_card
from worker.reporting import WorkLost
from worker.serving_recipes import recipes_markdown
from worker.splits import held_out_positions

log = logging.getLogger(__name__)
# What a GGUF stores per weight (llama.cpp's block sizes: q8_0 is 34 bytes per 32, q4_K_M mixes q4_K and q6_K).
GGUF_BYTES_PER_WEIGHT = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_k_m": 0.61}


class JobStateError(StateError):
    """The job is not in a state that allows this action."""


def job_create(*, plan: JobPlan, name: str = "", default_name: bool = True) -> FineTuneJob:
    """Create the planned job (`plan.job_plan`): its files first (the data snapshot, published to the store),
    then the row in a short transaction; on commit the train workers are woken to claim it. A failed
    insert leaves no files behind. A job without a name gets `job_default_name` unless `default_name` is off
    (the OpenAI API, where the name is the suffix)."""
    name = name.strip()
    if not name and default_name:
        name = job_default_name(dataset_name=plan.dataset_name, config=plan.config, when=timezone.now())
    job = FineTuneJob(
        owner=plan.owner,
        dataset=plan.dataset,
        base_model=plan.base_model,
        config=plan.config.to_dict(),
        grader=plan.grader,
        name=name[:200],
        dataset_name=plan.dataset_name,
        dataset_sha256=plan.dataset_sha256,
        memory_mb=plan.memory_mb,
    )
    try:
        job.validation = _job_files_write(job, plan)
        job.stored_bytes = blobs.stored_bytes(job_files(job))
        with transaction.atomic():
            job.save(force_insert=True)
            wake_train_workers()
            if plan.waiting_for:
                job_event(
                    job_id=job.id,
                    kind="waiting",
                    message=f"{plan.waiting_for}; it starts when a worker that fits it is running",
                )
    except BaseException:
        blobs.delete(job_files(job))
        raise
    return job


def _job_files_write(job: FineTuneJob, plan: JobPlan) -> dict:
    """Write the job's data snapshot into its folder and publish it (the one place a new job's files are written);
    returns the validation record with its row counts. The snapshot keeps the split for eval loss and evaluation
    alike, and deleting the dataset later changes nothing; a retry copies its job's."""
    with blobs.writing(job_files(job, "data")) as folder:
        if plan.snapshot_of is not None:
            shutil.copytree(blobs.fetch(job_files(plan.snapshot_of, "data")), folder)
            rows = {k: v for k, v in plan.snapshot_of.validation.items() if k in ("train_rows", "eval_rows")}
        else:
            folder.mkdir()
            rows = _snapshot_write(plan, folder)
        # Refused before the snapshot is published: it is stored for the job's whole life.
        check_limit(plan.owner, "storage_bytes", used=storage_used(plan.owner), adding=blobs.local_bytes(folder))
    return {**plan.validation, **rows}


def _snapshot_write(plan: JobPlan, folder: Path) -> dict:
    """Copy a planned job's datasets, as normalised at upload, into its snapshot example by example: a request
    never holds a dataset whole. A split holds out the positions `split_examples` would, from the stored count."""
    assert plan.dataset is not None, "a plan without a dataset copies a snapshot instead"
    validation = plan.validation
    held: set[int] = set()
    if validation["kind"] == "split":
        held = held_out_positions(plan.dataset.rows, validation["percent"], validation["seed"])
    source = blobs.fetch(plan.dataset.normalized_file)
    train, eval_rows = copy_normalized_lines(
        source, folder / "train.jsonl", folder / "eval.jsonl" if held else None, held
    )
    if validation["kind"] == "dataset":
        assert plan.validation_dataset is not None, "the plan's kind dataset names one"
        eval_rows, _ = copy_normalized_lines(
            blobs.fetch(plan.validation_dataset.normalized_file), folder / "eval.jsonl"
        )
    if not train or (validation["kind"] != "none" and not eval_rows):
        raise InputError("dataset", "the dataset's stored examples do not match its count; upload the file again")
    return {"train_rows": train, "eval_rows": eval_rows}


def job_default_name(*, dataset_name: str, config: TrainConfig, when) -> str:
    """A readable name for a job the user did not name: its dataset, preset (and method) and a short date."""
    kind = preset_of(config) + ("" if config.method == "supervised" else f" {config.method.upper()}")
    return f"{Path(dataset_name).stem or dataset_name} · {kind} · {timezone.localtime(when):%b %-d %H:%M}"


def job_delete(*, job: FineTuneJob, by) -> None:
    """Delete an ended (or paused) job with its files: adapter, checkpoints, exports, data snapshot, chats
    and votes. A job still queued or running is cancelled first; one another live job starts from is kept."""
    if job.owner_id != by.id:
        raise JobStateError("not your job")
    deletable = [*TERMINAL_STATUSES, JobStatus.PAUSED]
    if job.status not in deletable:
        raise JobStateError(f"a {job.status} job cannot be deleted; cancel it first")
    users = (
        FineTuneJob.objects.filter(owner=by, config__start_from=str(job.id))
        .exclude(status__in=TERMINAL_STATUSES)
        .exclude(id=job.id)
    )
    follower = users.first()
    if follower is not None:
        raise JobStateError(
            f"job {follower.name or follower.short_id} starts from this job's adapter; delete it (or let it end) first"
        )
    folder = job_files(job)
    with transaction.atomic():
        if not FineTuneJob.objects.filter(id=job.id, status__in=deletable).delete()[0]:
            job.refresh_from_db()
            raise JobStateError(f"a {job.status} job cannot be deleted; cancel it first")
        transaction.on_commit(lambda: blobs.delete(folder))


def _announce_end(job: FineTuneJob) -> None:
    """Tell other domains (webhooks) once the job's end is committed."""
    transaction.on_commit(lambda: job_finished.send(sender=FineTuneJob, job=job))


def _stop(
    *, job: FineTuneJob, by, request: str, at_once_from: list[str], at_once_to: str, verb: str, **at_once_fields
) -> FineTuneJob:
    """A job not yet on a worker changes status at once; a running one gets the cooperative flag,
    which the engine reads before its next step."""
    if job.owner_id != by.id:
        raise JobStateError("not your job")
    with transaction.atomic():
        if not FineTuneJob.objects.filter(id=job.id, status__in=at_once_from).update(
            status=at_once_to, stop_requested=request, **at_once_fields
        ):
            if not FineTuneJob.objects.filter(id=job.id, status=JobStatus.RUNNING).update(stop_requested=request):
                job.refresh_from_db()
                raise JobStateError(f"a {job.status} job cannot be {verb}")
    job.refresh_from_db()
    if job.status == at_once_to:
        transaction.on_commit(lambda: publish_status(job))
        if job.status in TERMINAL_STATUSES:
            _announce_end(job)
    else:
        publish_job(job.id, "message", {"kind": request, "message": f"{request} requested"})
    return job


def job_cancel(*, job: FineTuneJob, by) -> FineTuneJob:
    """Cancel: a queued or paused job at once, a running one before its next step."""
    return _stop(
        job=job,
        by=by,
        request="cancel",
        at_once_from=[JobStatus.QUEUED, JobStatus.PAUSED],
        at_once_to=JobStatus.CANCELLED,
        verb="cancelled",
        finished=timezone.now(),
    )


def job_pause(*, job: FineTuneJob, by) -> FineTuneJob:
    """Pause: a queued job at once; a running one saves a checkpoint before its next step and frees the worker."""
    return _stop(
        job=job, by=by, request="pause", at_once_from=[JobStatus.QUEUED], at_once_to=JobStatus.PAUSED, verb="paused"
    )


def job_resume(*, job: FineTuneJob, by) -> FineTuneJob:
    """Queue a paused job again; the engine continues from its newest checkpoint."""
    if job.owner_id != by.id:
        raise JobStateError("not your job")
    job_check_quotas(owner=by, new_job=False)
    with transaction.atomic():
        if not FineTuneJob.objects.filter(id=job.id, status=JobStatus.PAUSED).update(
            status=JobStatus.QUEUED, stop_requested=""
        ):
            job.refresh_from_db()
            raise JobStateError(f"a {job.status} job cannot be resumed; only a paused one")
        wake_train_workers()
    job.refresh_from_db()
    transaction.on_commit(lambda: publish_status(job))
    return job


def job_retry(*, job: FineTuneJob, by, config: TrainConfig | None = None) -> FineTuneJob:
    """A new job with the same data snapshot and settings (or `config`), for a failed or cancelled one: planned
    and created as any new job."""
    if job.owner_id != by.id:
        raise JobStateError("not your job")
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise JobStateError(f"a {job.status} job cannot be retried; only a failed or cancelled one")
    plan = job_plan(
        owner=by,
        dataset=job.dataset,
        base_model=job.base_model,
        config=config or TrainConfig.from_dict(job.config),
        snapshot_of=job,
    )
    return job_create(plan=plan, name=f"{job.name} (retry)" if job.name else "", default_name=False)


def job_event(*, job_id, kind: str, message: str) -> None:
    """A line in the job's log, shown live on its page."""
    JobEvent.objects.create(job_id=job_id, kind=kind, message=message)
    publish_job(job_id, "message", {"kind": kind, "message": message})


def job_mark(
    *, job_id, status: str, error: str = "", error_code: str = "", claim: str | None = None, **fields: Any
) -> FineTuneJob:
    """Record a worker-side status change and announce it (`error_code` says what kind of failure).
    With `claim`, only the run holding that claim may write it (WorkLost otherwise); the claim ends."""
    values = dict(
        status=status, error=error, error_code=error_code, stop_requested="", lease_until=None, claim="", **fields
    )
    if status in TERMINAL_STATUSES:
        values["finished"] = timezone.now()
    rows = FineTuneJob.objects.filter(id=job_id)
    if claim is not None:
        rows = rows.filter(claim=claim, status=JobStatus.RUNNING)
    if not rows.update(**values) and claim is not None:
        raise WorkLost(f"job {job_id} is no longer claimed by this worker")
    job = FineTuneJob.objects.get(id=job_id)
    publish_status(job)
    if status in TERMINAL_STATUSES:
        _announce_end(job)
    return job


def adapter_create(*, job: FineTuneJob, result) -> Adapter:
    """Package the trained adapter: zip with tokenizer, config, metrics, dataset hash, model card."""
    out = job_output_dir(job)
    points = list(MetricPoint.objects.filter(job=job).order_by("step"))
    metrics = [{"step": p.step, **{k: v for k, v in p.as_event().items() if v is not None}} for p in points]
    title = job.name or f"LoRA adapter {job.short_id}"
    evaluation = job_evaluation(job)
    card = model_card(
        title=title,
        base_model=job.base_model.name,
        config=job.config,
        rows=job.validation.get("train_rows", 0),
        dataset_sha256=job.dataset_sha256,
        steps=result.steps_done,
        final_loss=result.final_loss,
        targets=result.targets,
        evaluation_md=summary_markdown(evaluation) if evaluation else "",
        precision=getattr(result, "precision", "") or job.precision,
        serving_md=recipes_markdown(job_serving_recipes(job, api_base="$LORA_STUDIO_URL/v1")),
    )
    extra = {"evaluation.json": (out / "evaluation.json").read_text()} if evaluation else {}
    zip_path = out / f"adapter-{job.short_id}.zip"
    folder, zip_name = media_relative(result.adapter_dir), media_relative(zip_path)
    with blobs.writing(zip_name) as tmp_zip:
        build_adapter_zip(
            result.adapter_dir,
            tmp_zip,
            card=card,
            config={**job.config, "validation": job.validation},
            metrics=metrics,
            dataset_sha256=job.dataset_sha256,
            extra_files=extra,
            walltimes={p.step: p.created.timestamp() for p in points},
        )
    with blobs.writing(folder, in_place=True) as adapter_dir:  # the engine wrote the adapter there
        (adapter_dir / "README.md").write_text(card)
    if evaluation:
        with blobs.writing(job_files(job, "evaluation.json"), in_place=True):
            pass  # written by the engine; leaving the block publishes it
    blobs.delete(job_files(job, "checkpoints"))
    adapter, _ = Adapter.objects.update_or_create(
        job=job,
        defaults=dict(
            folder=folder, zip_file=zip_name, size_bytes=zip_path.stat().st_size, sha256=file_sha256(zip_path)
        ),
    )
    job_storage_record(job.id)
    return adapter


def export_estimate(job: FineTuneJob, format: str = ExportFormat.MERGED, quantization: str = "") -> int:
    """Bytes the export will store: the base's parameters in 16 bits (merged, and the base beside a GGUF LoRA), or
    at the GGUF's bits per weight (q8_0: 8.5, q4_k_m: about 4.9)."""
    parameters = job.base_model.parameters or 0
    if format == ExportFormat.GGUF_LORA:
        return 2 * parameters + job.adapter.size_bytes
    return int(parameters * GGUF_BYTES_PER_WEIGHT.get(quantization, 2))


def export_request(*, job: FineTuneJob, by, format: str, quantization: str | None = None) -> tuple[JobExport, bool]:
    """Queue an export of the job's adapter on the background worker unless the same one is pending or ready;
    the row and whether it was queued now. InputError names a format or quantization it cannot have. Its row
    counts the attempts; the memory check happens on the worker, before loading."""
    if job.owner_id != by.id:
        raise JobStateError("not your job")
    quantization = export_checked(job, format, quantization)
    if not job.has_adapter:
        raise JobStateError("only a succeeded job has an adapter to export")
    if export_state(export_of(job, format, quantization)) == "none":
        # The zip holds the weights (stored, not deflated): refused now, not after the work.
        check_limit(by, "storage_bytes", used=storage_used(by), adding=export_estimate(job, format, quantization))
    with transaction.atomic():
        row, queued = export_queue(job, format, quantization)
        if queued:
            queue.enqueue(queue.MERGE_ADAPTER, str(job.id), row.id)
    return row, queued


def adapter_merge_request(*, job: FineTuneJob, by) -> str:
    """Queue the merged-model export (merge_and_unload); returns its status: pending or ready."""
    row, queued = export_request(job=job, by=by, format=ExportFormat.MERGED)
    return "pending" if queued else export_state(row)


def export_delete(*, export: JobExport, by) -> bool:
    """Delete an export's zip and row to free storage; whether a ready one was there (a pending one is refused)."""
    job = export.job
    if job.owner_id != by.id:
        raise JobStateError("not your job")
    if export_state(export) == "pending":
        raise JobStateError("the export is still being made; delete it once it is ready")
    existed = export_forget(export)
    blobs.delete(export_zip_name(export))
    if export.format == ExportFormat.MERGED:
        shutil.rmtree(job_output_dir(job) / "merged", ignore_errors=True)  # left by releases that kept the folder
    job_storage_record(job.id)
    if existed:
        what = "merged model" if export.format == ExportFormat.MERGED else f"{export.format} export"
        job_event(job_id=job.id, kind="export", message=f"{what} deleted")
    return existed


def merged_export_delete(*, job: FineTuneJob, by) -> bool:
    """Delete the job's merged model (zip and row) to free storage; False if there was none."""
    row = merged_export_of(job)
    if row is None:
        return False
    if export_state(row) == "pending":
        raise JobStateError("the merged model is still being made; delete it once it is ready")
    return export_delete(export=row, by=by)
