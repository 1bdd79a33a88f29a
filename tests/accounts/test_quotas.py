"""Per-user limits: defaults from settings, overrides in the admin, a 429 naming the limit through the
form, REST and the OpenAI API; the usage page; the fair order of the train queue; the run-time limit;
merged exports deleted on request and after a while; stale pending uploads removed."""

import datetime as dt
import os
import time
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from jobs.accounts.limits import QuotaExceeded, storage_used, usage_of
from jobs.accounts.models import Quota
from jobs.accounts.services import api_key_create
from jobs.common.storage import media_path
from jobs.datasets import tasks as dataset_tasks
from jobs.datasets.mapping import PENDING_DIR
from jobs.datasets.services import dataset_create
from jobs.training import export_tasks
from jobs.training import services as job_services
from jobs.training import tasks as train_tasks
from jobs.training.claims import fair_order
from jobs.training.files import job_output_dir, merged_zip_path
from jobs.training.models import FineTuneJob, JobExport, JobStatus
from jobs.training.plan import job_plan
from jobs.webhooks.services import webhook_create
from tests.factories import bearer_client, chat_jsonl
from tests.training.test_jobs import form_data
from worker.config import TrainConfig

FAST = dict(
    rank=4,
    alpha=8,
    dropout=0.0,
    target_preset="attention",
    learning_rate=0.01,
    batch_size=4,
    max_seq_length=64,
    warmup_ratio=0.0,
    seed=1,
    max_steps=6,
    save_every=2,
)
JOB_BODY = {"config": FAST, "validation": "none"}


def queued_job(owner, base_model, dataset=None, **fields) -> FineTuneJob:
    return FineTuneJob.objects.create(
        owner=owner, base_model=base_model, dataset=dataset, config=TrainConfig(**FAST).to_dict(), **fields
    )


def test_the_active_jobs_limit_answers_429_in_every_interface(settings, user, base_model, dataset, api, client_in):
    settings.QUOTA_ACTIVE_JOBS = 2
    queued_job(user, base_model, dataset)
    queued_job(user, base_model, dataset, status=JobStatus.PAUSED)
    body = {"dataset": str(dataset.id), "base_model": str(base_model.id), **JOB_BODY}
    with mock.patch("jobs.training.tasks.job_run.delay") as delay:
        rest = api.post("/api/v1/jobs/", body, format="json")
        openai = api.post(
            "/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": f"file-{dataset.id.hex}"}, format="json"
        )
        page = client_in.post("/jobs/new/", form_data(base_model, dataset))
    assert rest.status_code == 429 and rest.json()["error"]["field"] == "quota"
    assert rest.json()["error"]["limit"] == "active_jobs" and rest.json()["error"]["allowed"] == 2
    assert "queued, running and paused jobs" in rest.json()["error"]["message"]
    assert openai.status_code == 429 and openai.json()["error"]["code"] == "quota_exceeded"
    assert page.status_code == 429 and "limit reached" in page.content.decode()
    assert FineTuneJob.objects.count() == 2 and not delay.called
    Quota.objects.create(user=user, active_jobs=3)  # an administrator raises it for this user only
    with mock.patch("jobs.training.tasks.job_run.delay"):
        assert api.post("/api/v1/jobs/", body, format="json").status_code == 201


def test_daily_compute_and_storage_limits(settings, user, base_model, dataset, api):
    settings.QUOTA_COMPUTE_SECONDS_PER_DAY = 60
    queued_job(user, base_model, status=JobStatus.SUCCEEDED, run_started=timezone.now(), run_seconds=61)
    body = {"dataset": str(dataset.id), "base_model": str(base_model.id), **JOB_BODY}
    response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 429 and response.json()["error"]["limit"] == "compute_seconds_per_day"
    settings.QUOTA_COMPUTE_SECONDS_PER_DAY = 3600
    settings.QUOTA_STORAGE_BYTES = dataset.size_bytes + 10
    upload = SimpleUploadedFile("more.jsonl", chat_jsonl())
    response = api.post("/api/v1/datasets/", {"file": upload}, format="multipart")
    assert response.status_code == 429 and response.json()["error"]["limit"] == "storage_bytes"
    with pytest.raises(QuotaExceeded):
        dataset_create(owner=user, upload=SimpleUploadedFile("more.jsonl", chat_jsonl()))


def test_keys_and_webhooks_are_limited(settings, user):
    settings.QUOTA_API_KEYS = 1
    settings.QUOTA_WEBHOOKS = 1
    api_key_create(owner=user)
    with pytest.raises(QuotaExceeded, match="API keys"):
        api_key_create(owner=user)
    webhook_create(owner=user, url="https://example.com/a")
    with pytest.raises(QuotaExceeded, match="webhooks"):
        webhook_create(owner=user, url="https://example.com/b")


def test_usage_page_and_api_show_figures_against_limits(settings, user, base_model, dataset, client_in, api):
    settings.QUOTA_ACTIVE_JOBS = 5
    queued_job(user, base_model, dataset)
    rows = {row["limit"]: row for row in api.get("/api/v1/usage/").json()}
    assert rows["active_jobs"]["used"] == 1 and rows["active_jobs"]["allowed"] == 5
    stored = sum(p.stat().st_size for p in media_path("datasets").rglob("*") if p.is_file())  # file, JSONL, tokens
    assert rows["storage_bytes"]["used"] == stored > dataset.size_bytes and rows["api_keys"]["used"] == 1
    html = client_in.get("/account/usage/").content.decode()
    assert 'id="usage-active_jobs"' in html and "queued, running and paused jobs" in html
    assert rows == {row["limit"]: row for row in usage_of(user)}


def test_the_train_queue_is_fair_across_users(user, other_user, base_model):
    a_running = queued_job(user, base_model, status=JobStatus.RUNNING, run_started=timezone.now())
    a_jobs = [queued_job(user, base_model) for _ in range(3)]
    b_job = queued_job(other_user, base_model)
    # Alice is at her running limit (1): only Bob's job may start.
    assert fair_order() == [b_job.id]
    FineTuneJob.objects.filter(id=a_running.id).update(status=JobStatus.SUCCEEDED)
    # Both are free now; Bob has never run a job, so his goes first, even for a message of Alice's job;
    # Alice's then start in the order she queued them.
    assert fair_order(preferred_job_id=a_jobs[2].id) == [b_job.id, *[j.id for j in a_jobs]]


def test_a_job_stops_at_the_maximum_run_time(settings, user, base_model, dataset):
    settings.JOB_MAX_RUN_SECONDS = 0
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(**FAST))
        )
    assert train_tasks.job_run(str(job.id)) == "failed"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error_code == "time_limit" and job.run_seconds > 0
    assert "JOB_MAX_RUN_SECONDS" in job.error


def test_merged_exports_are_deleted_on_request_and_expire(settings, user, base_model, api):
    job = queued_job(user, base_model, status=JobStatus.SUCCEEDED)
    zip_path = merged_zip_path(job)
    zip_path.parent.mkdir(parents=True)
    zip_path.write_bytes(b"PK")
    JobExport.objects.create(job=job, status="ready", size_bytes=2, finished=timezone.now())
    with (
        mock.patch("jobs.common.blobs.Store.size", side_effect=AssertionError("a store call per job")),
        mock.patch("jobs.common.blobs.LocalStore.size", side_effect=AssertionError("a store call per job")),
    ):
        assert storage_used(user) == 2  # the row's size, from the database
    assert api.delete(f"/api/v1/jobs/{job.id}/merged/").status_code == 204 and not zip_path.exists()
    assert api.delete(f"/api/v1/jobs/{job.id}/merged/").status_code == 404
    assert storage_used(user) == 0
    zip_path.write_bytes(b"PK")
    JobExport.objects.create(job=job, status="ready", size_bytes=2, finished=timezone.now())
    assert export_tasks.expire_files() == {"exports": 0}  # fresh
    old = timezone.now() - dt.timedelta(days=settings.MERGED_EXPORT_DAYS + 1)
    JobExport.objects.filter(job=job).update(finished=old)
    assert export_tasks.expire_files() == {"exports": 1} and not zip_path.exists()
    assert not JobExport.objects.filter(job=job).exists()
    assert job_output_dir(job).is_dir()


def test_pending_uploads_expire(settings, user, db):
    folder = media_path(PENDING_DIR)
    folder.mkdir(parents=True)
    stale, fresh = folder / f"{user.id}-aaaa.csv", folder / f"{user.id}-bbbb.csv"
    stale.write_text("a,b\n")
    fresh.write_text("a,b\n")
    old = time.time() - (settings.UPLOAD_PENDING_HOURS + 1) * 3600
    os.utime(stale, (old, old))
    assert dataset_tasks.expire_uploads() == 1 and not stale.exists() and fresh.exists()


def test_another_users_quota_row_changes_nothing_for_you(settings, user, other_user):
    settings.QUOTA_API_KEYS = 1
    Quota.objects.create(user=other_user, api_keys=10)
    bearer_client(user)
    with pytest.raises(QuotaExceeded):
        api_key_create(owner=user)
