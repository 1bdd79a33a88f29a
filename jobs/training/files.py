"""Where a job's files live under MEDIA_ROOT (and, with STORAGE_URL, in the object store: jobs.common.blobs):
its data snapshot, checkpoints, adapter, evaluation and exports (whose state is a JobExport row each)."""

from __future__ import annotations

import json
from pathlib import Path

from jobs.common import blobs
from jobs.common.storage import media_path
from jobs.training.models import ExportFormat, FineTuneJob, JobExport

# What the engine resumes from besides the data snapshot: its checkpoints and the adapters it keeps beside them.
RESUME_ADAPTERS = ("best-adapter", "initial-adapter")
RESUME_FOLDERS = ("data", "checkpoints") + RESUME_ADAPTERS


def job_files(job: FineTuneJob, name: str = "") -> str:
    """The stored name of the job's folder, or of `name` inside it (rows and jobs.common.blobs use these)."""
    return f"jobs/{job.id}" + (f"/{name}" if name else "")


def job_storage_record(job_id) -> int:
    """Measure what the store holds under the job's folder (snapshot, checkpoints, adapters, zips, the merged
    export) and record it on the row, which the storage quota sums; called after each write or delete there."""
    stored = blobs.stored_bytes(f"jobs/{job_id}")
    FineTuneJob.objects.filter(id=job_id).update(stored_bytes=stored)
    return stored


def job_output_dir(job: FineTuneJob) -> Path:
    return media_path(job_files(job))


def job_evaluation(job: FineTuneJob) -> dict | None:
    """The end-of-job base-vs-adapted evaluation, if the job had a validation split."""
    if not (job.validation or {}).get("eval_rows") and not job_output_dir(job).joinpath("evaluation.json").is_file():
        return None  # no validation split, no evaluation: nothing to look for in the store
    path = blobs.fetch(job_files(job, "evaluation.json"))
    return json.loads(path.read_text()) if path.is_file() else None


def merged_zip_name(job: FineTuneJob) -> str:
    return job_files(job, f"merged-{job.short_id}.zip")


def merged_zip_path(job: FineTuneJob) -> Path:
    return media_path(merged_zip_name(job))


def export_zip_name(export: JobExport) -> str:
    """The stored name of an export's zip: merged-<id>.zip as before, gguf-lora-<id>.zip, gguf-merged-q8_0-<id>.zip."""
    job = export.job
    if export.format == ExportFormat.MERGED:
        return merged_zip_name(job)
    kind = export.format + (f"-{export.quantization}" if export.quantization else "")
    return job_files(job, f"{kind}-{job.short_id}.zip")
