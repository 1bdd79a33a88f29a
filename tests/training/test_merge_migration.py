"""Upgrading to JobExport rows keeps every merged export: a stored zip becomes a ready row with its size, a
`merge.pending` marker (JSON, or empty from older releases) a queued row with its attempts whose lease has run
out (the sweep sends it at once); the markers go."""

import json
import os
import time

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("training", "0006_job_precision")]


def later_apps(executor):
    """The other apps' latest migrations that do not build on training's later ones (tracking, sweeps and
    benchmarks do)."""
    later = ("training", "tracking", "sweeps", "benchmarks")
    return [node for node in executor.loader.graph.leaf_nodes() if node[0] not in later]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor


@pytest.mark.django_db(transaction=True)
def test_merge_markers_and_zips_become_rows(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    executor = migrate(BEFORE)
    others = later_apps(executor)
    apps = executor.loader.project_state(BEFORE + others).apps
    owner = apps.get_model("auth", "User").objects.create(username="old", password="!")
    base = apps.get_model("base_models", "BaseModel").objects.create(name="b", path="/nowhere")
    jobs = {}
    for name in ("ready", "queued", "old-empty", "running", "none"):
        jobs[name] = apps.get_model("training", "FineTuneJob").objects.create(
            owner=owner, base_model=base, config={}, status="succeeded", name=name
        )
    folder = lambda job: settings.MEDIA_ROOT / "jobs" / str(job.id)  # noqa: E731
    for job in jobs.values():
        folder(job).mkdir(parents=True)
    made = folder(jobs["ready"]) / f"merged-{str(jobs['ready'].id)[:8]}.zip"
    made.write_bytes(b"PK-12345")
    two_days_ago = time.time() - 2 * 86400
    os.utime(made, (two_days_ago, two_days_ago))
    (folder(jobs["queued"]) / "merge.pending").write_text(json.dumps({"attempts": 2, "running": False}))
    (folder(jobs["old-empty"]) / "merge.pending").write_text("")
    (folder(jobs["running"]) / "merge.pending").write_text(json.dumps({"attempts": 1, "running": True}))

    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    from unittest import mock

    from jobs.training import export_tasks
    from jobs.training.exports import merged_status
    from jobs.training.models import FineTuneJob, JobExport

    rows = {row.job.name: row for row in JobExport.objects.select_related("job")}
    assert (rows["ready"].status, rows["ready"].size_bytes) == ("ready", 8)
    assert abs(rows["ready"].finished.timestamp() - two_days_ago) < 60  # it expires counting from when it was made
    assert (rows["queued"].status, rows["queued"].attempts) == ("queued", 2)
    assert (rows["old-empty"].status, rows["old-empty"].attempts) == ("queued", 0)
    assert (rows["running"].status, rows["running"].attempts) == ("queued", 1)
    assert "none" not in rows
    assert not list(settings.MEDIA_ROOT.glob("jobs/*/merge.pending"))
    status = {name: merged_status(FineTuneJob.objects.get(id=job.id)) for name, job in jobs.items()}
    assert status == {
        "ready": "ready",
        "queued": "pending",
        "old-empty": "pending",
        "running": "pending",
        "none": "none",
    }
    with mock.patch("jobs.training.export_tasks.adapter_merge.delay") as delay:
        assert export_tasks.merge_sweep() == 2  # their messages count as lost: sent again (the third gives up)
    assert delay.call_count == 2 and JobExport.objects.get(job_id=jobs["queued"].id).status == "failed"


@pytest.mark.django_db(transaction=True)
def test_merged_exports_survive_as_exports_of_format_merged(settings, tmp_path):
    """0011 renames MergedExport to JobExport: an installation's merged exports stay, listed as format "merged"."""
    settings.MEDIA_ROOT = tmp_path / "media"
    before = [("training", "0010_finetunejob_grader")]
    executor = migrate(before)
    others = later_apps(executor)
    apps = executor.loader.project_state(before + others).apps
    owner = apps.get_model("auth", "User").objects.create(username="old", password="!")
    base = apps.get_model("base_models", "BaseModel").objects.create(name="b", path="/nowhere")
    job = apps.get_model("training", "FineTuneJob").objects.create(
        owner=owner, base_model=base, config={}, status="succeeded", name="kept"
    )
    apps.get_model("training", "MergedExport").objects.create(job=job, status="ready", size_bytes=8, attempts=1)

    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    from jobs.training.exports import merged_status
    from jobs.training.models import FineTuneJob, JobExport
    from tests.factories import bearer_client

    row = JobExport.objects.get(job_id=job.id)
    assert (row.format, row.quantization, row.status, row.size_bytes, row.attempts) == ("merged", "", "ready", 8, 1)
    assert merged_status(FineTuneJob.objects.get(id=job.id)) == "ready"
    from django.contrib.auth import get_user_model

    listed = bearer_client(get_user_model().objects.get(id=owner.id)).get(f"/api/v1/jobs/{job.id}/exports/").json()
    assert [(e["format"], e["status"], e["download"]) for e in listed] == [
        ("merged", "ready", f"/api/v1/jobs/{job.id}/merged/")
    ]
