"""Where a job's files live under MEDIA_ROOT: its data snapshot, checkpoints, adapter, evaluation
and merged export."""
from __future__ import annotations

import json
from pathlib import Path

from common.storage import media_path
from training.models import FineTuneJob

MERGE_MARKER = "merge.pending"


def job_output_dir(job: FineTuneJob) -> Path:
    return media_path(f"jobs/{job.id}")


def job_evaluation(job: FineTuneJob) -> dict | None:
    """The end-of-job base-vs-adapted evaluation, if the job had a validation split."""
    path = job_output_dir(job) / "evaluation.json"
    return json.loads(path.read_text()) if path.is_file() else None


def merged_zip_path(job: FineTuneJob) -> Path:
    return job_output_dir(job) / f"merged-{job.short_id}.zip"


def merged_status(job: FineTuneJob) -> str:
    """none, pending or ready."""
    if merged_zip_path(job).is_file():
        return "ready"
    return "pending" if (job_output_dir(job) / MERGE_MARKER).exists() else "none"
