"""Cursor pagination, the adapters list, REST chat and job events with an API key."""

from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from jobs.accounts.services import api_key_create
from jobs.arena import tasks as chat_tasks
from jobs.common.storage import media_path
from jobs.datasets import services as dataset_services
from jobs.training import export_tasks
from jobs.training import services as job_services
from jobs.training import tasks as train_tasks
from jobs.training.plan import job_plan
from worker.config import TrainConfig

FAST = TrainConfig(
    rank=8,
    alpha=16,
    dropout=0.0,
    target_preset="all_linear",
    epochs=3,
    learning_rate=0.01,
    batch_size=4,
    warmup_ratio=0.0,
)


@pytest.fixture
def dataset(user, chat_file):
    return dataset_services.dataset_create(owner=user, upload=SimpleUploadedFile("chat.jsonl", chat_file.read_bytes()))


@pytest.fixture
def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_job_list_is_cursor_paginated(api, user, dataset, base_model):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        ids = [
            str(
                job_services.job_create(
                    plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=FAST)
                ).id
            )
            for _ in range(5)
        ]
    first = api.get("/api/v1/jobs/?page_size=2").json()
    assert len(first["results"]) == 2 and first["previous"] is None and first["next"]
    second = api.get(first["next"]).json()
    third = api.get(second["next"]).json()
    seen = [j["id"] for j in first["results"] + second["results"] + third["results"]]
    assert seen == list(reversed(ids)) and third["next"] is None


def test_adapters_list_and_rest_chat(api, user, other_user, dataset, base_model, django_capture_on_commit_callbacks):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=FAST))
    assert api.post(f"/api/v1/jobs/{job.id}/chat/", {"prompt": "hi"}, format="json").status_code == 409
    train_tasks.job_run(str(job.id))
    adapters = api.get("/api/v1/adapters/").json()
    assert [a["job"] for a in adapters] == [str(job.id)] and adapters[0]["base_model"] == "tiny-llama"

    with mock.patch("jobs.arena.tasks.chat_round.delay") as delay, django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"/api/v1/jobs/{job.id}/chat/", {"prompt": "colour 1", "max_new_tokens": 8}, format="json")
    assert response.status_code == 201 and delay.call_count == 1
    body = response.json()
    assert chat_tasks.chat_round([a["id"] for a in body["answers"]]) == ["done", "done"]
    answers = api.get(f"/api/v1/jobs/{job.id}/chat/?session={body['session']}").json()
    assert {a["side"]: a["state"] for a in answers} == {"base": "done", "adapter": "done"}
    assert (
        api.post(f"/api/v1/jobs/{job.id}/chat/", {"prompt": "x", "max_new_tokens": 0}, format="json").status_code == 400
    )

    other = APIClient()
    other.force_authenticate(other_user)
    assert other.get("/api/v1/adapters/").json() == []
    assert other.post(f"/api/v1/jobs/{job.id}/chat/", {"prompt": "hi"}, format="json").status_code == 404
    assert other.get(f"/api/v1/jobs/{job.id}/chat/?session={body['session']}").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_job_events_stream_accepts_an_api_key(user, other_user, dataset, base_model, client):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=FAST))
    job_services.job_cancel(job=job, by=user)
    _, key = api_key_create(owner=user, name="ci")
    _, other_key = api_key_create(owner=other_user, name="ci")
    response = client.get(f"/api/v1/jobs/{job.id}/events/", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    assert client.get(f"/api/v1/jobs/{job.id}/events/", HTTP_AUTHORIZATION=f"Bearer {other_key}").status_code == 404
    assert client.get(f"/api/v1/jobs/{job.id}/events/", HTTP_AUTHORIZATION="Bearer ls-wrong").status_code == 404


def test_merged_export_equals_the_adapted_model(
    api, user, dataset, base_model, tiny_llama, tmp_path, django_capture_on_commit_callbacks
):
    import io
    import zipfile

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=FAST))
    assert api.post(f"/api/v1/jobs/{job.id}/merged/").status_code == 409
    train_tasks.job_run(str(job.id))
    assert api.get(f"/api/v1/jobs/{job.id}/merged/").status_code == 404
    with (
        mock.patch("jobs.training.export_tasks.adapter_merge.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = api.post(f"/api/v1/jobs/{job.id}/merged/")
    assert response.status_code == 202 and response.json() == {"status": "pending", "download": None}
    delay.assert_called_once_with(str(job.id), job.exports.get().id)
    assert export_tasks.adapter_merge(str(job.id)) == "ready"
    response = api.post(f"/api/v1/jobs/{job.id}/merged/")
    assert response.status_code == 200 and response.json()["status"] == "ready"
    data = b"".join(api.get(f"/api/v1/jobs/{job.id}/merged/").streaming_content)
    folder = tmp_path / "merged"
    zipfile.ZipFile(io.BytesIO(data)).extractall(folder)
    assert (folder / "model.safetensors").is_file() and not (folder / "adapter_config.json").exists()
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    adapter_dir = media_path(job.adapter.folder)
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(folder)(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), adapter_dir)(
            input_ids=ids
        ).logits
    assert torch.allclose(merged, adapted, atol=1e-4)
    assert job.events.filter(kind="export", message="merged model ready").exists()


def test_estimate_over_the_api(api, dataset, base_model):
    body = {"dataset": str(dataset.id), "base_model": str(base_model.id), "config": {"rank": 4, "batch_size": 4}}
    est = api.post("/api/v1/estimate/", body, format="json").json()
    assert est["steps"] == 4 and est["trainable_params"] > 0 and est["targets"][0] == "self_attn.q_proj"
    bad = api.post("/api/v1/estimate/", {**body, "config": {"rank": 0}}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "rank"
    bad = api.post(
        "/api/v1/estimate/", {**body, "config": {"target_preset": "custom", "target_modules": ["wq"]}}, format="json"
    )
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "target_modules"
