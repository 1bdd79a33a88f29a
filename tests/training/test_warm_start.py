"""The train worker keeps the base loaded between jobs (TRAIN_WARM_MODELS_MB) and says so in the job's log."""

from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.datasets import services as dataset_services
from jobs.training import services as job_services
from jobs.training import tasks as train_tasks
from jobs.training.models import JobEvent, JobStatus
from jobs.training.plan import job_plan
from worker.config import TrainConfig

FAST = {"rank": 4, "alpha": 8, "target_preset": "attention", "epochs": 1, "batch_size": 4, "seed": 1}


def base_events(job):
    return list(
        JobEvent.objects.filter(job=job, kind="setup", message__contains="base model").values_list("message", flat=True)
    )


@pytest.fixture
def dataset(user, chat_file):
    return dataset_services.dataset_create(owner=user, upload=SimpleUploadedFile("chat.jsonl", chat_file.read_bytes()))


def run_job(user, base_model, dataset):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(**FAST))
        )
    assert train_tasks.job_run(str(job.id)) == "succeeded"
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    return job


@pytest.mark.django_db
def test_second_job_on_a_base_starts_warm(user, base_model, dataset, settings, monkeypatch):
    monkeypatch.setattr(train_tasks, "_warm_bases", None)
    settings.TRAIN_WARM_MODELS_MB = 256
    assert base_events(run_job(user, base_model, dataset)) == ["loading base model"]
    assert base_events(run_job(user, base_model, dataset)) == ["base model already loaded (warm start)"]
    assert train_tasks.warm_bases().stats()["loads"] == 1


@pytest.mark.django_db
def test_zero_budget_loads_every_time(user, base_model, dataset, settings, monkeypatch):
    monkeypatch.setattr(train_tasks, "_warm_bases", None)
    settings.TRAIN_WARM_MODELS_MB = 0
    assert train_tasks.warm_bases() is None
    for _ in range(2):
        assert base_events(run_job(user, base_model, dataset)) == ["loading base model"]
