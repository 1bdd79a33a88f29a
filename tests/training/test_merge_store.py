"""A merged export across machines sharing only the object store (moto's S3 server): asked for on the web
host, made on a background host with an empty disk, downloaded and deleted on the web host; the merge
marker and its staleness live in the store."""
from pathlib import Path
from unittest import mock

import pytest

from jobs.common import blobs
from tests.training.test_merge_safety import job  # noqa: F401 (the fixture)
from tests.training.test_merge_safety import request_merge
from jobs.training import tasks as train_tasks
from jobs.training.files import merge_state_read, merged_status, merged_zip_name, stale_merge_job_ids


def switch_host(settings, tmp_path, name: str) -> None:
    settings.MEDIA_ROOT = tmp_path / name / "media"


@pytest.fixture
def stored_job(object_store, job, settings):  # noqa: F811
    blobs.publish(job.adapter.folder)  # as the train host did at the end of the job
    return job


def test_a_merge_is_asked_made_and_served_by_different_hosts(stored_job, api, settings, tmp_path):
    job = stored_job
    request_merge(api, job)
    assert merge_state_read(job) == {"attempts": 0, "running": False}

    switch_host(settings, tmp_path, "background")
    assert merged_status(job) == "pending" and merge_state_read(job) == {"attempts": 0, "running": False}
    assert stale_merge_job_ids(0.0) == [str(job.id)] and stale_merge_job_ids(3600) == []

    def fake_merge(base_path, adapter_dir, out_dir):
        assert (Path(adapter_dir) / "adapter_model.safetensors").is_file()  # fetched from the store
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(b"weights")
        return out_dir

    with mock.patch("jobs.training.tasks.merge_adapter", side_effect=fake_merge):
        assert train_tasks.adapter_merge(str(job.id)) == "ready"

    switch_host(settings, tmp_path, "web-2")
    assert merged_status(job) == "ready" and merge_state_read(job) is None and stale_merge_job_ids(0.0) == []
    response = api.get(f"/api/v1/jobs/{job.id}/merged/")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert b"".join(response.streaming_content)[:2] == b"PK"
    assert not (Path(settings.MEDIA_ROOT) / merged_zip_name(job)).exists()  # streamed from the store

    assert api.delete(f"/api/v1/jobs/{job.id}/merged/").status_code == 204
    assert not blobs.is_file(merged_zip_name(job)) and merged_status(job) == "none"
