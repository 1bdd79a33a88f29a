"""Where a job's files live under MEDIA_ROOT: its data snapshot, checkpoints, adapter, evaluation
and merged export."""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from common.storage import media_path
from training.models import FineTuneJob

MERGE_MARKER = "merge.pending"
MERGE_MAX_ATTEMPTS = 3


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
    return "pending" if merge_marker_path(job).exists() else "none"


# --- the pending merged export: `merge.pending` holds {"attempts": n, "running": bool} -------------
# Its mtime is when it was last queued or, while a merge runs, the merge's last heartbeat; a marker
# left over from before it held JSON (empty) reads as queued with no attempt made.

def merge_marker_path(job: FineTuneJob) -> Path:
    return job_output_dir(job) / MERGE_MARKER


def merge_state_read(job: FineTuneJob) -> dict | None:
    """The pending merge's {"attempts", "running"}, or None when no merge is pending."""
    try:
        text = merge_marker_path(job).read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError:
        data = {}
    return {"attempts": int(data.get("attempts", 0)), "running": bool(data.get("running", False))}


def merge_state_write(job: FineTuneJob, *, attempts: int, running: bool) -> None:
    """Write the marker atomically (a reader never sees half of it); this also stamps its mtime."""
    path = merge_marker_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{MERGE_MARKER}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps({"attempts": attempts, "running": running}))
    os.replace(tmp, path)


def merge_marker_age(job: FineTuneJob) -> float | None:
    """Seconds since the marker was last written or touched; None without one."""
    try:
        return time.time() - merge_marker_path(job).stat().st_mtime
    except FileNotFoundError:
        return None


def merge_marker_remove(job: FineTuneJob) -> None:
    merge_marker_path(job).unlink(missing_ok=True)


def stale_merge_job_ids(stale_s: float) -> list[str]:
    """Ids of the jobs whose merge marker nobody has touched for `stale_s` seconds (queued and lost,
    or running on a worker that died: a live merge touches its marker as a heartbeat)."""
    now, ids = time.time(), []
    for marker in sorted(media_path("jobs").glob(f"*/{MERGE_MARKER}")):
        try:
            uuid.UUID(marker.parent.name)
            if now - marker.stat().st_mtime > stale_s:
                ids.append(marker.parent.name)
        except (ValueError, FileNotFoundError):
            continue
    return ids
