"""A job's exports' state: one JobExport row per job, format and quantization (the merged safetensors model, the
GGUF LoRA, the merged GGUF), claimed like all long work (jobs.common.leased): a run takes the row with a fresh token and
a lease on the database's clock, renews the lease while it works, and writes its progress and end only while it
still holds the token. A lease that ran out means the message was lost (queued) or the worker died (running):
the sweep queues it again, counting an attempt, and gives up after EXPORT_MAX_ATTEMPTS."""

from __future__ import annotations

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models.functions import Now

from jobs.common.leased import LeasedRows, lease_from_now
from jobs.training.models import ExportFormat, FineTuneJob, JobExport
from worker.errors import InputError

GGUF_QUANTIZATIONS = ("f16", "bf16", "q8_0", "q4_k_m")
GGUF_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")  # what worker.gguf_export converts
Q4_UNAVAILABLE = (
    "q4_k_m is not available on this server: the gguf package on its worker cannot write 4-bit k-quants "
    "(llama.cpp's quantizer is not installed). Choose q8_0 (half the size of f16, nearly the same answers), "
    "or quantize the f16 file yourself with llama.cpp's llama-quantize."
)
EXPORT_MAX_ATTEMPTS = 3
MERGE_MAX_ATTEMPTS = EXPORT_MAX_ATTEMPTS  # the name the merged export's callers know
Status = JobExport.Status
PENDING = (Status.QUEUED, Status.RUNNING)
LEASED = LeasedRows(JobExport, lambda: settings.MERGE_STALE_SECONDS, max_attempts=EXPORT_MAX_ATTEMPTS)


def export_of(job: FineTuneJob, format: str, quantization: str = "") -> JobExport | None:
    return JobExport.objects.filter(job_id=job.id, format=format, quantization=quantization).first()


def merged_export_of(job: FineTuneJob) -> JobExport | None:
    return export_of(job, ExportFormat.MERGED)


def export_state(row: JobExport | None) -> str:
    """none, pending or ready (a failed export reads as none: it can be asked again)."""
    if row is None:
        return "none"
    if row.status in PENDING:
        return "pending"
    return "ready" if row.status == Status.READY else "none"


def merged_status(job: FineTuneJob) -> str:
    """The merged export's state: none, pending or ready."""
    return export_state(merged_export_of(job))


def export_checked(job: FineTuneJob, format: str, quantization: str | None) -> str:
    """The quantization to store ("" but for gguf-merged, whose default is f16) for an export the job's base can
    have; InputError naming the field otherwise."""
    if format not in ExportFormat.values:
        raise InputError("format", f"must be one of {', '.join(ExportFormat.values)}")
    if format != ExportFormat.GGUF_MERGED:
        if quantization:
            raise InputError("quantization", "only gguf-merged takes a quantization")
        quantization = ""
    else:
        quantization = quantization or "f16"
        if quantization not in GGUF_QUANTIZATIONS:
            raise InputError("quantization", f"must be one of {', '.join(GGUF_QUANTIZATIONS)}")
        from worker.gguf_export import quantization_available

        if quantization == "q4_k_m" and not quantization_available("q4_k_m"):
            raise InputError("quantization", Q4_UNAVAILABLE)
    architecture = job.base_model.architecture
    if format != ExportFormat.MERGED and architecture and architecture not in GGUF_ARCHITECTURES:
        raise InputError(
            "format",
            f"GGUF export converts Llama-architecture models (Llama, SmolLM, Mistral); this job's base model is "
            f"{architecture}. The merged export (format merged) works for every model.",
        )
    return quantization


def export_status(row: JobExport) -> str:
    """pending, running, ready or failed, as the API and the page say it."""
    return "pending" if row.status == Status.QUEUED else row.status


def export_download_url(row: JobExport) -> str | None:
    """The zip's address once ready (the merged export keeps its address from before GGUF)."""
    if row.status != Status.READY:
        return None
    if row.format == ExportFormat.MERGED:
        return f"/api/v1/jobs/{row.job_id}/merged/"
    return f"/api/v1/jobs/{row.job_id}/exports/{row.id}/download/"


def export_queue(job: FineTuneJob, format: str, quantization: str = "") -> tuple[JobExport, bool]:
    """Queue a fresh export (attempts from zero) unless one is pending or ready; the row and whether it was
    queued. The lease is the time its message has to arrive before the sweep counts it lost."""
    fresh = dict(
        status=Status.QUEUED,
        attempts=0,
        claim="",
        error="",
        stage="",
        progress=0.0,
        size_bytes=0,
        finished=None,
        lease_until=lease_from_now(settings.MERGE_STALE_SECONDS),
    )
    key = dict(job_id=job.id, format=format, quantization=quantization)
    try:
        with transaction.atomic():
            row, created = JobExport.objects.get_or_create(**key, defaults={"status": Status.QUEUED})
            if created or row.status == Status.FAILED:
                queued = JobExport.objects.filter(id=row.id, status=row.status).update(**fresh) == 1
                row.refresh_from_db()
                return row, queued
    except IntegrityError:  # asked twice at once: the other request made the row
        pass
    return JobExport.objects.get(**key), False


def export_running_alive(row: JobExport) -> bool:
    """A run holds the export and its lease has not run out."""
    return JobExport.objects.filter(id=row.id, status=Status.RUNNING, lease_until__gt=Now()).exists()


def export_claim(row: JobExport) -> str | None:
    """Take the export for this run (queued, or running on a worker whose lease ran out), counting an attempt;
    the claim token, or None when another run holds it or nothing is pending."""
    return LEASED.claim(row.id)


def merge_claim(job: FineTuneJob) -> str | None:
    """Claim the job's merged export (see export_claim)."""
    row = merged_export_of(job)
    return export_claim(row) if row else None


def export_renew(row: JobExport, token: str) -> bool:
    """Push the running export's lease on; False once its claim is gone."""
    return LEASED.renew(row.id, token)


def export_progress(row: JobExport, token: str, *, stage: str, progress: float) -> bool:
    """Record what the running export is doing (and renew its lease); False once its claim is gone."""
    return LEASED.renew(row.id, token, stage=stage[:60], progress=max(0.0, min(1.0, progress)))


def export_finish(row: JobExport, token: str, *, size_bytes: int) -> bool:
    """The zip is stored: the export is ready (only for the run that holds the claim)."""
    return LEASED.finish(row.id, token, Status.READY, size_bytes=size_bytes, error="", stage="", progress=1.0)


def merge_finish(job: FineTuneJob, token: str, *, size_bytes: int) -> bool:
    """Finish the job's merged export (see export_finish)."""
    row = merged_export_of(job)
    return row is not None and export_finish(row, token, size_bytes=size_bytes)


def export_fail(row: JobExport, message: str, *, token: str | None = None) -> bool:
    """Give the export up with `message` (fenced by `token` when a run holds it); it can be asked again."""
    return LEASED.end(row.id, message, token=token)


def exports_stale() -> list[JobExport]:
    """Pending exports whose lease ran out: the message was lost, or the worker died mid-export."""
    return list(LEASED.stale().select_related("job"))


def export_requeue(row: JobExport, attempts: int) -> bool:
    """Queue a stale export again with `attempts` and a fresh lease, unless someone changed it meanwhile."""
    return LEASED.requeue(row, attempts)


def export_forget(row: JobExport) -> bool:
    """Remove a ready (or failed) export's row; whether a ready one was there."""
    ready = row.status == Status.READY
    JobExport.objects.filter(id=row.id, status__in=[Status.READY, Status.FAILED]).delete()
    return ready
