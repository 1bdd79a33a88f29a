"""A merged export across machines sharing only the object store (moto's S3 server): asked for on the web
host, made on a background host with an empty disk, downloaded and deleted on the web host; the export's
state lives in the database, its zip in the store."""

from pathlib import Path
from unittest import mock

import pytest

from jobs.common import blobs
from jobs.training import export_tasks
from jobs.training.exports import exports_stale, merged_status
from jobs.training.files import merged_zip_name
from jobs.training.models import JobExport
from tests.training.test_merge_safety import (
    age,
    job,  # noqa: F401 (the fixture)
    request_merge,
)


def merge_state_read(of):
    """The pending export's attempts and whether a run holds it; None when none is pending."""
    row = JobExport.objects.filter(job=of, status__in=["queued", "running"]).first()
    return row and {"attempts": row.attempts, "running": row.status == "running"}


def stale_merge_job_ids() -> list[str]:
    """Jobs whose pending export's lease ran out (the sweep's view)."""
    return [str(row.job_id) for row in exports_stale()]


def switch_host(settings, tmp_path, name: str) -> None:
    settings.MEDIA_ROOT = tmp_path / name / "media"


@pytest.fixture
def stored_job(object_store, job, settings):  # noqa: F811
    with blobs.writing(job.adapter.folder, in_place=True):
        pass  # published, as the train host did at the end of the job
    return job


def test_a_merge_is_asked_made_and_served_by_different_hosts(stored_job, api, settings, tmp_path):
    job = stored_job  # noqa: F811 (the fixture of the same name is imported for stored_job)
    request_merge(api, job)
    assert merge_state_read(job) == {"attempts": 0, "running": False}

    switch_host(settings, tmp_path, "background")
    assert merged_status(job) == "pending" and merge_state_read(job) == {"attempts": 0, "running": False}
    assert stale_merge_job_ids() == []  # its message is on its way
    age(job, settings.MERGE_STALE_SECONDS + 1)
    assert stale_merge_job_ids() == [str(job.id)]

    def fake_merge(base_path, adapter_dir, out_dir):
        assert (Path(adapter_dir) / "adapter_model.safetensors").is_file()  # fetched from the store
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(b"weights")
        return out_dir

    with mock.patch("jobs.training.export_tasks.merge_adapter", side_effect=fake_merge):
        assert export_tasks.adapter_merge(str(job.id)) == "ready"

    switch_host(settings, tmp_path, "web-2")
    assert merged_status(job) == "ready" and merge_state_read(job) is None and stale_merge_job_ids() == []
    response = api.get(f"/api/v1/jobs/{job.id}/merged/")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert b"".join(response.streaming_content)[:2] == b"PK"
    assert not (Path(settings.MEDIA_ROOT) / merged_zip_name(job)).exists()  # streamed from the store

    assert api.delete(f"/api/v1/jobs/{job.id}/merged/").status_code == 204
    assert not blobs.is_file(merged_zip_name(job)) and merged_status(job) == "none"
