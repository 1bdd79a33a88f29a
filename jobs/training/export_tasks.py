"""The background worker's export tasks: a job's merged safetensors model, its GGUF LoRA (with the base as GGUF,
made once per base model and reused) and its merged GGUF, each zipped and stored; the sweep that re-queues lost
exports and the expiry of old ones. They take ids, re-read the JobExport row and claim it (jobs.training.exports).

Every export runs the same way: a memory check before anything is loaded (MERGE_MEMORY_BUDGET_MB), a claim that
counts an attempt (so a redelivery after the worker died counts too; EXPORT_MAX_ATTEMPTS), a heartbeat that keeps
the lease while it works, progress on the row, and a plain reason on the row and in the job's log when it fails."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
import time
import uuid
from pathlib import Path

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from jobs.base_models.services import base_gguf_name
from jobs.common import blobs, queue
from jobs.common.errors import failure_category
from jobs.common.leased import lease_heartbeat
from jobs.common.shares import EXPORTS, owner_share
from jobs.training import exports, publish, services
from jobs.training.files import export_zip_name, job_output_dir, job_storage_record
from jobs.training.models import ExportFormat, FineTuneJob, JobExport
from worker.errors import InputError
from worker.export import merge_adapter, zip_files, zip_folder

log = logging.getLogger(__name__)
_one_export_at_a_time = threading.Lock()
MIB = 2**20
Status = JobExport.Status
WHAT = {
    ExportFormat.MERGED: "merged export",
    ExportFormat.GGUF_LORA: "GGUF LoRA export",
    ExportFormat.GGUF_MERGED: "merged GGUF export",
}


def export_label(row: JobExport) -> str:
    """The export in words, for the job's log: "merged export", "merged GGUF export (q8_0)"."""
    return WHAT[ExportFormat(row.format)] + (f" ({row.quantization})" if row.quantization else "")


def merge_memory_need(job: FineTuneJob) -> int:
    """Bytes a merge holds at once: the base's weights unquantized in the dtype the merge loads them
    at (the base's own, worker.export.merge_adapter), plus the adapter's."""
    from worker.inference import estimate_adapter_bytes, estimate_base_bytes
    from worker.modeling import original_dtype

    return estimate_base_bytes(
        job.base_model.local_path, original_dtype(job.base_model.local_path)
    ) + estimate_adapter_bytes(str(blobs.fetch(job.adapter.folder)))


def export_memory_need(row: JobExport) -> tuple[int, str]:
    """Bytes the export holds at once, and what they are in words. A GGUF is written tensor by tensor: a merged
    GGUF's peak is the merge's; a GGUF LoRA's is the base's largest tensor (if its GGUF is to be made) and the
    adapter."""
    from worker.gguf_bundle import gguf_peak_bytes
    from worker.inference import estimate_adapter_bytes

    job = row.job
    if row.format == ExportFormat.GGUF_LORA:
        adapter = estimate_adapter_bytes(str(blobs.fetch(job.adapter.folder)))
        return gguf_peak_bytes(
            job.base_model.local_path
        ) + adapter, "the base's largest weight in float32 and the adapter"
    return merge_memory_need(job), "the base's weights unquantized and the adapter"


def _give_up(row: JobExport, message: str, *, token: str | None = None) -> None:
    if exports.export_fail(row, message, token=token):
        services.job_event(job_id=row.job_id, kind="error", message=message)


def _export_row(job_id: str, export_id: int | None) -> JobExport | None:
    rows = JobExport.objects.select_related("job__base_model", "job__adapter", "job__owner")
    job_uuid = uuid.UUID(str(job_id))
    if export_id is None:  # a message from before GGUF exports: the job's merged export
        return rows.filter(job_id=job_uuid, format=ExportFormat.MERGED).first()
    return rows.filter(id=export_id, job_id=job_uuid).first()


@shared_task(name=queue.MERGE_ADAPTER, acks_late=True, reject_on_worker_lost=True)
def adapter_merge(job_id: str, export_id: int | None = None) -> str:
    """Make one of the job's exports (`export_id`; None: its merged export) and store its zip.

    The JobExport row counts attempts: one is counted as a run claims it, so a message redelivered after its
    worker died (killed for memory, say) counts too, and the export gives up after EXPORT_MAX_ATTEMPTS. An export
    that cannot fit MERGE_MEMORY_BUDGET_MB is refused before loading anything. Either way the job's log and the
    row say why and the row is marked failed, so it can be asked again."""
    row = _export_row(job_id, export_id)
    if row is None or row.status == Status.FAILED:
        return "skipped"  # nothing pending: already given up or refused, or never asked for
    if row.status == Status.READY:
        return "ready"
    if exports.export_running_alive(row):
        return "in progress"  # a duplicate message while another worker's run is alive
    if row.attempts >= exports.EXPORT_MAX_ATTEMPTS:
        _give_up(
            row,
            f"{export_label(row)} gave up after {exports.EXPORT_MAX_ATTEMPTS} attempts "
            "(the worker stopped each time, perhaps out of memory)",
        )
        return "failed"
    token = None
    with owner_share(EXPORTS, row.job.owner_id):  # before the try: a full share is not a failure
        try:
            (need, what), budget = export_memory_need(row), settings.MERGE_MEMORY_BUDGET_MB * MIB
            if need > budget:
                _give_up(
                    row,
                    f"{export_label(row)} refused: it needs about {need / MIB:,.1f} MB ({what}), more than "
                    f"MERGE_MEMORY_BUDGET_MB ({settings.MERGE_MEMORY_BUDGET_MB:,} MB)",
                )
                return "refused"
            token = exports.export_claim(row)
            if token is None:
                return "in progress"  # another worker claimed it a moment ago
            return _export_claimed(row, token)
        except Exception as exc:
            log.exception("export %s of job %s failed", row.id, job_id)
            reason = exc.message if isinstance(exc, InputError) else failure_category(exc)  # the engine's words
            _give_up(row, f"{export_label(row)} failed: {reason}", token=token)
            return "failed"


class _Progress:
    """Writes a running export's stage and progress to its row, at most every half second (fenced by the claim)."""

    def __init__(self, row: JobExport, token: str):
        self.row, self.token, self.last = row, token, 0.0

    def __call__(self, stage: str, fraction: float, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= 0.5:
            self.last = now
            exports.export_progress(self.row, self.token, stage=stage, progress=fraction)

    def span(self, start: float, end: float):
        """A gguf_bundle progress callback (stage, done, total) mapped onto [start, end] of the whole."""
        words = {
            "base": "writing the base model's GGUF",
            "adapter": "writing the LoRA GGUF",
            "model": "writing the GGUF",
        }

        def report(stage: str, done: int, total: int) -> None:
            self(words.get(stage, stage), start + (end - start) * done / max(total, 1))

        return report


def _export_claimed(row: JobExport, token: str) -> str:
    job = row.job
    every_s = max(1.0, min(30.0, settings.MERGE_STALE_SECONDS / 4))
    progress = _Progress(row, token)
    # The background worker runs tasks in threads: exports still go one at a time (memory budget).
    with _one_export_at_a_time, lease_heartbeat(lambda: exports.export_renew(row, token), every_s=every_s):
        scratch = job_output_dir(job) / f".export-{row.id}"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            files, notes = _make_files(row, scratch, progress)
            progress("zipping", 0.97, force=True)
            with blobs.writing(export_zip_name(row)) as zip_path:
                if isinstance(files, dict):
                    zip_files(files, zip_path)
                else:
                    zip_folder(files, zip_path)
                size = zip_path.stat().st_size
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # served as the zip: the files would only double the storage
    job_storage_record(job.id)
    if not exports.export_finish(row, token, size_bytes=size):
        return "lost"  # another run took the export over; it records the end
    services.job_event(job_id=job.id, kind="export", message=_ready_note(row, notes))
    return "ready"


def _ready_note(row: JobExport, notes: tuple[str, ...]) -> str:
    if row.format == ExportFormat.MERGED:
        return "merged model ready" + (
            " (QLoRA adapter merged into the 16-bit base)" if row.job.config.get("qlora") else ""
        )
    return f"{export_label(row)} ready" + "".join(f"; note: {n}" for n in notes)


def _make_files(row: JobExport, scratch: Path, progress: _Progress) -> tuple[dict[str, Path] | Path, tuple[str, ...]]:
    """The export's files: a folder to zip (merged), or the GGUF files by their names in the zip, and notes."""
    from worker.gguf_bundle import export_gguf_lora, export_gguf_merged

    job = row.job
    base_dir, adapter_dir = job.base_model.local_path, blobs.fetch(job.adapter.folder)
    if row.format == ExportFormat.GGUF_LORA:
        base_gguf, notes = _base_gguf(job, progress)
        progress("writing the LoRA GGUF", 0.6, force=True)
        made = export_gguf_lora(adapter_dir, base_dir, scratch, base_gguf=base_gguf, progress=progress.span(0.6, 0.95))
        return made.files, notes + made.notes
    progress("merging the adapter into the base", 0.05, force=True)
    merged = merge_adapter(base_dir, adapter_dir, scratch / "merged")
    if row.format == ExportFormat.MERGED:
        return merged, ()
    progress("writing the GGUF", 0.5, force=True)
    made = export_gguf_merged(
        merged, scratch / "gguf", quantization=row.quantization, progress=progress.span(0.5, 0.95)
    )
    return made.files, made.notes


def _base_gguf(job: FineTuneJob, progress: _Progress) -> tuple[Path, tuple[str, ...]]:
    """The base model's GGUF: made once per base model (in its dtype, f16 or bf16) and kept in the store beside
    the other files, so every later GGUF LoRA export on the same base reuses it."""
    import torch

    from worker.gguf_export import model_to_gguf
    from worker.modeling import original_dtype

    base_dir = job.base_model.local_path
    quantization = "bf16" if original_dtype(base_dir) == torch.bfloat16 else "f16"
    name = base_gguf_name(job.base_model, quantization)
    if blobs.is_file(name):
        return blobs.fetch(name), ()
    progress("writing the base model's GGUF (once for this base model)", 0.05, force=True)
    span = progress.span(0.05, 0.6)
    with blobs.writing(name) as path:
        made = model_to_gguf(base_dir, path, quantization=quantization, progress=lambda done, n: span("base", done, n))
    return blobs.fetch(name), made.notes


@shared_task(name=queue.SWEEP_MERGES, acks_late=True)
def merge_sweep() -> int:
    """Queue again the exports whose lease ran out (message lost, or worker died mid-export); returns how many.
    Hub pushes that can no longer end fail (jobs.training.publish.publishes_stale_fail).
    A lost message counts as an attempt (a run that died counted its own as it claimed the row); past
    EXPORT_MAX_ATTEMPTS the export gives up. Re-queueing renews the lease, so a second sweep at once does nothing."""
    count = exports.LEASED.requeue_stale(
        exports.exports_stale(),
        send=lambda row: queue.send(queue.MERGE_ADAPTER, str(row.job_id), row.id),
        give_up=lambda row: _give_up(
            row,
            f"{export_label(row)} gave up after {exports.EXPORT_MAX_ATTEMPTS} attempts "
            "(its work was lost each time: the worker stopped or the queue lost it)",
        ),
    )
    if count:
        log.info("re-queued %d stale export(s)", count)
    if failed := publish.publishes_stale_fail():
        log.info("%d Hub push(es) could no longer end and failed", failed)
    return count


@shared_task(name=queue.EXPIRE_FILES)
def expire_files() -> dict[str, int]:
    """Delete exports older than MERGED_EXPORT_DAYS (they can be made again from the adapter)."""
    cutoff = timezone.now() - dt.timedelta(days=settings.MERGED_EXPORT_DAYS)
    deleted = 0
    for row in JobExport.objects.filter(status=Status.READY, finished__lt=cutoff).select_related("job__owner"):
        services.export_delete(export=row, by=row.job.owner)
        deleted += 1
    return {"exports": deleted}
