"""Small hardening: stored paths stay under the media root, deeply nested JSON is a 400, an engine bug's
text never reaches the user, and every job creation checks that the job fits in memory."""

from unittest import mock

import pytest
from django.core.exceptions import SuspiciousFileOperation

from jobs.common.storage import media_path
from jobs.training import tasks as train_tasks
from jobs.training.models import FineTuneJob


def test_stored_paths_cannot_leave_the_media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    assert media_path("datasets/a.jsonl") == (tmp_path / "media" / "datasets" / "a.jsonl").resolve()
    for bad in ("../secret_key", "/etc/passwd", "datasets/../../db.sqlite3"):
        with pytest.raises(SuspiciousFileOperation):
            media_path(bad)


def test_deeply_nested_json_is_a_400_everywhere(api, base_model):
    deep = "[" * 100_000 + "]" * 100_000
    for path in ("/api/v1/jobs/", "/v1/fine_tuning/jobs", "/v1/chat/completions"):
        response = api.post(path, deep, content_type="application/json")
        assert response.status_code == 400, (path, response.content[:200])


def test_an_engine_bug_is_reported_without_its_text(user, base_model, dataset):
    from jobs.training import services as job_services
    from jobs.training.plan import job_plan
    from worker.config import TrainConfig

    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(max_steps=2))
        )
    with mock.patch("jobs.training.tasks.run_training", side_effect=TypeError("/srv/secret/path/model.py line 3")):
        assert train_tasks.job_run(str(job.id)) == "failed"
    job.refresh_from_db()
    assert job.error_code == "internal_error" and "/srv/secret" not in job.error and "log" in job.error


def test_rest_and_openai_job_creation_refuse_a_job_that_cannot_fit(settings, api, base_model, dataset):
    settings.TRAIN_MEMORY_LIMIT_MB = 1
    body = {"dataset": str(dataset.id), "base_model": str(base_model.id), "validation": "none"}
    with mock.patch("jobs.training.tasks.job_run.delay") as delay:
        rest = api.post("/api/v1/jobs/", body, format="json")
        openai = api.post(
            "/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": f"file-{dataset.id.hex}"}, format="json"
        )
    assert rest.status_code == 400 and rest.json()["error"]["field"] == "config"
    assert "would not fit in memory" in rest.json()["error"]["message"]
    assert openai.status_code == 400 and openai.json()["error"]["param"] == "hyperparameters"
    assert not FineTuneJob.objects.exists() and not delay.called
