"""The storage quota charges what is stored (a small Parquet that normalises to megabytes of JSONL is charged the
megabytes), counts every kind the product keeps for a user (datasets, waiting uploads, token counts, job folders,
merged exports, the user's own models), and is checked before each write that grows it; the daily training time
pauses a running job and holds back queued ones."""

import io
import shutil
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from jobs.accounts.limits import storage_used
from jobs.accounts.models import Quota
from jobs.base_models.models import BaseModel
from jobs.common.storage import media_path
from jobs.datasets.mapping import MappingNeeded
from jobs.datasets.models import Dataset, TokenProfile, UploadCheck
from jobs.datasets.services import dataset_create
from jobs.training import export_tasks
from jobs.training import services as job_services
from jobs.training import tasks as train_tasks
from jobs.training.claims import fair_order
from jobs.training.models import FineTuneJob, JobEvent, JobExport, JobStatus
from jobs.training.plan import job_plan
from jobs.training.reporting import DbReporter
from jobs.training.selectors import job_wait_reason
from tests.accounts.test_quotas import FAST, JOB_BODY, queued_job
from tests.training.test_routing import announced
from worker.config import TrainConfig


def small_parquet(rows: int = 3000) -> bytes:
    """A Parquet of a few kilobytes whose examples, written out as JSONL, take about 3 MB."""
    answer = "the same long answer, repeated to fill the line. " * 20
    table = pa.table({"prompt": [f"question {i}" for i in range(rows)], "completion": [answer] * rows})
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd")
    return out.getvalue()


def files_on_disk(*folders: str) -> dict[str, int]:
    """Every stored (not dot-named, work in progress) file under the media folders, with its size."""
    found = {}
    for folder in folders:
        root = media_path(folder)
        for path in root.rglob("*") if root.is_dir() else []:
            rel = path.relative_to(media_path(""))
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                found[rel.as_posix()] = path.stat().st_size
    return found


def usage_storage(api) -> int:
    return {row["limit"]: row for row in api.get("/api/v1/usage/").json()}["storage_bytes"]["used"]


def test_a_dataset_is_charged_its_stored_files_not_its_upload(settings, user, api):
    data = small_parquet()
    assert len(data) < 50_000
    settings.QUOTA_STORAGE_BYTES = 1_000_000  # the upload fits; its normalised examples (~3 MB) do not
    response = api.post("/api/v1/datasets/", {"file": SimpleUploadedFile("qa.parquet", data)}, format="multipart")
    assert response.status_code == 429, response.content
    error = response.json()["error"]
    assert error["limit"] == "storage_bytes" and error["allowed"] == 1_000_000
    assert "storage (bytes)" in error["message"] and "QUOTA_STORAGE_BYTES" in error["message"]
    assert not Dataset.objects.exists() and files_on_disk("datasets") == {}  # nothing half-written

    settings.QUOTA_STORAGE_BYTES = 20 * 1024**2
    response = api.post("/api/v1/datasets/", {"file": SimpleUploadedFile("qa.parquet", data)}, format="multipart")
    assert response.status_code == 201, response.content
    dataset = Dataset.objects.get()
    stored = files_on_disk("datasets")
    assert dataset.size_bytes == len(data) and dataset.stored_bytes == sum(stored.values()) > 100 * len(data)
    assert usage_storage(api) == sum(stored.values())


def test_storage_used_equals_the_files_stored_for_the_user(settings, user, other_user, base_model, api):
    """After a realistic sequence (datasets with their token counts, an upload waiting for its mapping, a job's
    snapshot, checkpoints, adapter and zip, a merged export, a model of the user's own, rows of an older release),
    the Usage API's storage figure is the sum of the files on disk; a merge that would pass the quota is refused."""
    dataset = dataset_create(owner=user, upload=SimpleUploadedFile("qa.parquet", small_parquet(300)))
    with pytest.raises(MappingNeeded):
        dataset_create(owner=user, upload=SimpleUploadedFile("odd.csv", b"foo,bar\n1,2\n3,4\n"))
    assert UploadCheck.objects.filter(owner=user, status=UploadCheck.Status.NEEDS_MAPPING).count() == 1
    assert TokenProfile.objects.filter(dataset=dataset, status=TokenProfile.Status.READY).exists()
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(**FAST))
        )
    assert job.stored_bytes == sum(files_on_disk(f"jobs/{job.id}").values()) > 0  # the data snapshot
    assert train_tasks.job_run(str(job.id)) == "succeeded"

    # A model of the user's own, and rows stored by an older release (no recorded size): measured once.
    own = BaseModel.objects.create(name="mine", path="", owner=user, status="ready", parameters=10)
    media_path(f"base-models/{own.id}").mkdir(parents=True)
    media_path(f"base-models/{own.id}/model.safetensors").write_bytes(b"w" * 12345)
    Dataset.objects.update(stored_bytes=None)
    FineTuneJob.objects.update(stored_bytes=None)
    BaseModel.objects.update(stored_bytes=None)

    on_disk = files_on_disk("datasets", "jobs", "base-models")
    assert any(name.startswith("datasets/pending/") for name in on_disk)
    assert any(name.startswith("datasets/tokens/") for name in on_disk)
    assert usage_storage(api) == sum(on_disk.values())
    assert usage_storage(bearer := api) == storage_used(user)  # measured once: the same figure again
    assert storage_used(other_user) == 0

    settings.QUOTA_STORAGE_BYTES = storage_used(user) + 1000  # room for much, not for the base's weights
    response = bearer.post(f"/api/v1/jobs/{job.id}/merged/")
    assert response.status_code == 429 and response.json()["error"]["limit"] == "storage_bytes"
    assert not JobExport.objects.filter(job=job).exists()

    settings.QUOTA_STORAGE_BYTES = 20 * 1024**3
    with mock.patch("jobs.training.export_tasks.adapter_merge.delay"):
        assert bearer.post(f"/api/v1/jobs/{job.id}/merged/").status_code == 202
    assert export_tasks.adapter_merge(str(job.id)) == "ready"
    on_disk = files_on_disk("datasets", "jobs", "base-models")
    assert any(Path(name).name.startswith("merged-") for name in on_disk)
    assert usage_storage(bearer) == sum(on_disk.values())


def test_a_job_whose_data_snapshot_would_pass_the_quota_is_refused(settings, user, base_model, dataset, api):
    settings.QUOTA_STORAGE_BYTES = storage_used(user) + 10  # under the limit, with no room for a snapshot
    body = {"dataset": str(dataset.id), "base_model": str(base_model.id), **JOB_BODY}
    with mock.patch("jobs.training.tasks.job_run.delay") as delay:
        response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 429 and response.json()["error"]["limit"] == "storage_bytes"
    assert not FineTuneJob.objects.exists() and files_on_disk("jobs") == {} and not delay.called
    settings.QUOTA_STORAGE_BYTES = 20 * 1024**2
    with mock.patch("jobs.training.tasks.job_run.delay"):
        assert api.post("/api/v1/jobs/", body, format="json").status_code == 201
    assert usage_storage(api) == sum(files_on_disk("datasets", "jobs").values())


def test_a_running_job_pauses_when_its_owners_daily_training_time_runs_out(settings, user, base_model, dataset, api):
    settings.QUOTA_COMPUTE_SECONDS_PER_DAY = 3600
    settings.COMPUTE_QUOTA_CHECK_SECONDS = 0
    earlier = queued_job(user, base_model, status=JobStatus.SUCCEEDED, run_started=timezone.now(), run_seconds=0)
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(**FAST))
        )
    log = DbReporter.log

    def log_and_use_up_the_day(reporter, step, metrics):
        # Mid-run, the owner's time today reaches the limit (an earlier run of the day is counted in).
        FineTuneJob.objects.filter(id=earlier.id).update(run_seconds=3600)
        return log(reporter, step, metrics)

    with mock.patch.object(DbReporter, "log", log_and_use_up_the_day):
        assert train_tasks.job_run(str(job.id)) == "paused"
    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED and 0 < job.step < FAST["max_steps"]
    message = JobEvent.objects.filter(job=job, kind="pause").latest("id").message
    assert "your daily training time (3,600 s) is used up" in message
    assert "administrator" in message and "QUOTA_COMPUTE_SECONDS_PER_DAY" in message

    response = api.post(f"/api/v1/jobs/{job.id}/resume/")
    assert response.status_code == 429 and response.json()["error"]["limit"] == "compute_seconds_per_day"
    Quota.objects.create(user=user, compute_seconds_per_day=100_000)  # an administrator raises it
    with mock.patch("jobs.training.tasks.job_run.delay"):
        assert api.post(f"/api/v1/jobs/{job.id}/resume/").status_code in (200, 202)
    assert train_tasks.job_run(str(job.id)) == "succeeded"


def test_queued_jobs_wait_while_their_owners_training_time_is_used_up(settings, user, other_user, base_model):
    settings.QUOTA_COMPUTE_SECONDS_PER_DAY = 60
    queued_job(user, base_model, status=JobStatus.SUCCEEDED, run_started=timezone.now(), run_seconds=61)
    mine = queued_job(user, base_model)
    theirs = queued_job(other_user, base_model)
    assert fair_order() == [theirs.id]
    assert train_tasks.Claim.take_fairest().job_id == theirs.id
    live = announced(("w1", 64_000, None))
    reason = job_wait_reason(job=mine, live=live, order=fair_order())
    assert reason.startswith("waits: your daily training time (60 s) is used up")
    assert "QUOTA_COMPUTE_SECONDS_PER_DAY" in reason
    Quota.objects.create(user=user, compute_seconds_per_day=3600)
    assert fair_order() == [mine.id]


def test_with_an_object_store_the_figure_is_what_the_bucket_holds(object_store, settings, user, base_model, api):
    from jobs.common import blobs

    dataset = dataset_create(owner=user, upload=SimpleUploadedFile("qa.parquet", small_parquet(300)))
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(**FAST))
        )
    in_bucket = {o.key: o.size for o in blobs.store().storage().bucket.objects.all()}
    assert any("/jobs/" in f"/{key}" for key in in_bucket) and any("datasets/" in key for key in in_bucket)
    Dataset.objects.update(stored_bytes=None)  # an older release's row: measured from the bucket, not this disk
    FineTuneJob.objects.update(stored_bytes=None)
    for folder in ("datasets", "jobs"):
        shutil.rmtree(media_path(folder))  # this machine's cache only
    assert usage_storage(api) == sum(in_bucket.values())


def test_a_waiting_upload_counts_and_its_background_check_is_refused_past_the_quota(settings, user, api):
    from jobs.datasets import uploads

    settings.DATASET_CHECK_INLINE_BYTES = 100  # checked by a background worker
    data = small_parquet()
    response = api.post("/api/v1/datasets/", {"file": SimpleUploadedFile("qa.parquet", data)}, format="multipart")
    assert response.status_code == 202
    assert usage_storage(api) == len(data) == sum(files_on_disk("datasets").values())  # the upload, waiting
    settings.QUOTA_STORAGE_BYTES = 1_000_000
    assert uploads.upload_check_run(check_id=response.json()["id"]) == "failed"
    check = api.get(response["Location"]).json()
    assert check["status"] == "failed" and "storage (bytes)" in check["problems"][0]
    assert check["problems"][0].startswith("qa.parquet: limit reached")
    assert not Dataset.objects.exists() and files_on_disk("datasets") == {} and usage_storage(api) == 0


def test_a_users_own_model_is_checked_and_counted(settings, user, api, tiny_llama, tmp_path):
    from jobs.base_models import services as model_services
    from tests.base_models.tiny_gguf import write_tiny_gguf

    settings.USER_MODELS = True
    gguf = write_tiny_gguf(tiny_llama, tmp_path / "tiny.F32.gguf")
    size = gguf.stat().st_size
    settings.QUOTA_STORAGE_BYTES = size - 1
    with open(gguf, "rb") as f:
        response = api.post("/api/v1/base-models/", {"source": "gguf", "file": f}, format="multipart")
    assert response.status_code == 429 and response.json()["error"]["limit"] == "storage_bytes"
    assert not BaseModel.objects.filter(owner=user).exists()

    settings.QUOTA_STORAGE_BYTES = size + 100  # room for the upload, not for the (larger) converted folder
    with open(gguf, "rb") as f:
        response = api.post("/api/v1/base-models/", {"source": "gguf", "file": f}, format="multipart")
    assert response.status_code == 202
    assert usage_storage(api) == size  # the upload, waiting for its conversion
    model_services.base_model_convert_gguf(model_id=response.json()["id"])
    refused = BaseModel.objects.get(id=response.json()["id"])
    assert refused.status == "failed" and refused.error.startswith("limit reached: storage (bytes)")
    assert files_on_disk("base-models") == {} and usage_storage(api) == 0

    settings.QUOTA_STORAGE_BYTES = 10 * size
    with open(gguf, "rb") as f:
        response = api.post("/api/v1/base-models/", {"source": "gguf", "file": f, "name": "tiny"}, format="multipart")
    model_services.base_model_convert_gguf(model_id=response.json()["id"])
    model = BaseModel.objects.get(id=response.json()["id"])
    assert model.status == "ready", model.error
    on_disk = files_on_disk("base-models")
    assert model.stored_bytes == sum(on_disk.values()) > size and usage_storage(api) == model.stored_bytes
