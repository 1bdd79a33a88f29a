"""Where a job's files live under MEDIA_ROOT (and, with STORAGE_URL, in the object store: jobs.common.blobs):
its data snapshot, checkpoints, adapter, evaluation and merged export."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

from jobs.common import blobs
from jobs.common.storage import media_path
from jobs.training.models import FineTuneJob

MERGE_MARKER = "merge.pending"
MERGE_MAX_ATTEMPTS = 3
# What the engine resumes from besides the data snapshot: its checkpoints and the adapters it keeps beside them.
RESUME_ADAPTERS = ("best-adapter", "initial-adapter")
RESUME_FOLDERS = ("data", "checkpoints") + RESUME_ADAPTERS


def job_files(job: FineTuneJob, name: str = "") -> str:
    """The stored name of the job's folder, or of `name` inside it (rows and jobs.common.blobs use these)."""
    return f"jobs/{job.id}" + (f"/{name}" if name else "")


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


def merged_status(job: FineTuneJob) -> str:
    """none, pending or ready."""
    if blobs.is_file(merged_zip_name(job)):
        return "ready"
    return "pending" if blobs.is_file(job_files(job, MERGE_MARKER)) else "none"


# --- the pending merged export: `merge.pending` holds {"attempts": n, "running": bool} -------------
# Its mtime is when it was last queued or, while a merge runs, the merge's last heartbeat; a marker
# left over from before it held JSON (empty) reads as queued with no attempt made.

def merge_marker_path(job: FineTuneJob) -> Path:
    return job_output_dir(job) / MERGE_MARKER


def merge_state_read(job: FineTuneJob) -> dict | None:
    """The pending merge's {"attempts", "running"}, or None when no merge is pending."""
    text = blobs.read_text(job_files(job, MERGE_MARKER))
    if text is None:
        return None
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError:
        data = {}
    return {"attempts": int(data.get("attempts", 0)), "running": bool(data.get("running", False))}


def merge_state_write(job: FineTuneJob, *, attempts: int, running: bool) -> None:
    """Write the marker atomically (a reader never sees half of it); this also stamps its mtime."""
    blobs.write_text(job_files(job, MERGE_MARKER), json.dumps({"attempts": attempts, "running": running}))


def merge_marker_touch(job: FineTuneJob) -> None:
    """The running merge's heartbeat; FileNotFoundError once the marker is gone."""
    blobs.touch(job_files(job, MERGE_MARKER))


def merge_marker_age(job: FineTuneJob) -> float | None:
    """Seconds since the marker was last written or touched; None without one."""
    return blobs.age(job_files(job, MERGE_MARKER))


def merge_marker_remove(job: FineTuneJob) -> None:
    blobs.delete(job_files(job, MERGE_MARKER))


def stale_merge_job_ids(stale_s: float) -> list[str]:
    """Ids of the jobs whose merge marker nobody has touched for `stale_s` seconds (queued and lost,
    or running on a worker that died: a live merge touches its marker as a heartbeat)."""
    ids = []
    for marker in blobs.find("jobs", MERGE_MARKER):
        job_id = marker.split("/")[1]
        try:
            uuid.UUID(job_id)
        except ValueError:
            continue
        age = blobs.age(marker)
        if age is not None and age > stale_s:
            ids.append(job_id)
    return ids
