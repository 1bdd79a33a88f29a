"""The OpenAI-compatible /v1/ API: files, fine-tuning jobs and models, with OpenAI's shapes and errors."""

from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.datasets.services import dataset_create
from jobs.training.models import Adapter, FineTuneJob, JobEvent, JobStatus, MetricPoint
from tests.factories import chat_jsonl


def assert_error(response, status, param=None, code=None):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


# --- files ---------------------------------------------------------------------------------


def test_file_upload_list_get_content_delete(api, user):
    response = api.post(
        "/v1/files",
        {"file": SimpleUploadedFile("colours.jsonl", chat_jsonl()), "purpose": "fine-tune"},
        format="multipart",
    )
    assert response.status_code == 200, response.content
    f = response.json()
    assert f["id"].startswith("file-") and len(f["id"]) == 5 + 32
    assert f["object"] == "file" and f["filename"] == "colours.jsonl" and f["purpose"] == "fine-tune"
    assert f["status"] == "processed" and f["bytes"] == len(chat_jsonl()) and isinstance(f["created_at"], int)
    listing = api.get("/v1/files").json()
    assert listing["object"] == "list" and [x["id"] for x in listing["data"]] == [f["id"]]
    assert api.get(f"/v1/files/{f['id']}").json() == f
    content = api.get(f"/v1/files/{f['id']}/content")
    assert b"".join(content.streaming_content) == chat_jsonl()
    deleted = api.delete(f"/v1/files/{f['id']}").json()
    assert deleted == {"id": f["id"], "object": "file", "deleted": True}
    assert_error(api.get(f"/v1/files/{f['id']}"), 404, code="file_not_found")


def test_file_upload_errors(api):
    assert_error(api.post("/v1/files", {"purpose": "fine-tune"}, format="multipart"), 400, param="file")
    assert_error(
        api.post(
            "/v1/files", {"file": SimpleUploadedFile("a.jsonl", chat_jsonl()), "purpose": "batch"}, format="multipart"
        ),
        400,
        param="purpose",
    )
    bad = api.post(
        "/v1/files",
        {"file": SimpleUploadedFile("a.jsonl", b'{"messages": [}\n'), "purpose": "fine-tune"},
        format="multipart",
    )
    assert "line 1" in assert_error(bad, 400, param="file", code="invalid_file")["message"]
    unmapped = api.post(
        "/v1/files",
        {"file": SimpleUploadedFile("a.jsonl", b'{"q": "a", "z": "b"}\n'), "purpose": "fine-tune"},
        format="multipart",
    )
    assert_error(unmapped, 400, param="file", code="invalid_file")
    assert_error(api.post("/v1/files", b"{}", content_type="application/json"), 415)
    assert_error(api.get("/v1/files/nonsense"), 404)
    assert_error(api.get("/v1/files/file-zzzz"), 404)


def test_another_users_file_does_not_exist(api_bob, dataset):
    fid = f"file-{dataset.id.hex}"
    for response in (
        api_bob.get(f"/v1/files/{fid}"),
        api_bob.get(f"/v1/files/{fid}/content"),
        api_bob.delete(f"/v1/files/{fid}"),
    ):
        assert_error(response, 404)
    assert api_bob.get("/v1/files").json()["data"] == []


# --- jobs ----------------------------------------------------------------------------------


def create_job(api, dataset, **body):
    payload = {"model": "tiny-llama", "training_file": f"file-{dataset.id.hex}", **body}
    with mock.patch("jobs.training.tasks.job_run.delay") as delay:
        response = api.post("/v1/fine_tuning/jobs", payload, format="json")
    return response, delay


def test_create_job_maps_hyperparameters_and_lora(api, user, base_model, dataset):
    response, _ = create_job(
        api,
        dataset,
        suffix="colours",
        seed=7,
        hyperparameters={"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 10},
        lora={
            "rank": 8,
            "alpha": 16,
            "dropout": 0,
            "target_preset": "all_linear",
            "use_rslora": True,
            "precision": "fp32",
        },
    )
    assert response.status_code == 200, response.content
    job = response.json()
    db_job = FineTuneJob.objects.get(owner=user)
    assert job["id"] == f"ftjob-{db_job.id.hex}" and job["object"] == "fine_tuning.job"
    assert job["model"] == "tiny-llama" and job["status"] == "queued" and job["fine_tuned_model"] is None
    assert job["training_file"] == f"file-{dataset.id.hex}" and job["validation_file"] is None
    assert job["hyperparameters"] == {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 10.0}
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": job["hyperparameters"]}}
    assert job["seed"] == 7 and job["error"] is None and job["result_files"] == []
    assert isinstance(job["created_at"], int) and job["finished_at"] is None
    c = db_job.config
    assert (c["epochs"], c["batch_size"], c["rank"], c["alpha"], c["target_preset"], c["use_rslora"], c["seed"]) == (
        3,
        2,
        8,
        16,
        "all_linear",
        True,
        7,
    )
    assert c["learning_rate"] == pytest.approx(0.01) and db_job.name == "colours"
    assert c["precision"] == "fp32" and job["lora"]["precision"] == "fp32"
    assert db_job.validation["kind"] == "none"


def test_create_job_with_method_form_and_validation_file(api, user, base_model, dataset):
    # Another dataset than the training one: the same one is refused, as through the form and REST.
    held_out = dataset_create(owner=user, upload=SimpleUploadedFile("held-out.jsonl", chat_jsonl()), name="held-out")
    response, _ = create_job(
        api,
        dataset,
        validation_file=f"file-{held_out.id.hex}",
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": "auto", "batch_size": 4, "learning_rate_multiplier": "auto"}
            },
        },
    )
    assert response.status_code == 200, response.content
    job = response.json()
    assert job["validation_file"] == f"file-{held_out.id.hex}"
    assert job["hyperparameters"]["batch_size"] == 4 and job["hyperparameters"]["learning_rate_multiplier"] == 1.0
    assert FineTuneJob.objects.get(owner=user).validation["kind"] == "dataset"


def test_create_job_is_queued_on_commit(api, base_model, dataset, django_capture_on_commit_callbacks):
    with mock.patch("jobs.training.tasks.job_run.delay") as delay, django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            "/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": f"file-{dataset.id.hex}"}, format="json"
        )
    assert response.status_code == 200
    job = FineTuneJob.objects.get()
    assert response.json()["id"] == f"ftjob-{job.id.hex}"
    delay.assert_called_once_with()  # a wake-up names no job


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"lora": {"rank": 0}}, 400, "lora.rank"),
        ({"lora": {"target_preset": "everything"}}, 400, "lora.target_preset"),
        ({"lora": {"target_preset": "custom", "target_modules": ["nope"]}}, 400, "lora.target_modules"),
        ({"lora": {"colour": 1}}, 400, "lora.colour"),
        ({"lora": {"precision": "fp8"}}, 400, "lora.precision"),
        ({"hyperparameters": {"n_epochs": 0}}, 400, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"learning_rate_multiplier": -1}}, 400, "hyperparameters.learning_rate_multiplier"),
        ({"hyperparameters": {"warmup": 1}}, 400, "hyperparameters.warmup"),
        ({"method": {"type": "dpo"}}, 400, "method.type"),
        ({"temperature": 1}, 400, "temperature"),
        ({"model": "gpt-4o"}, 404, "model"),
        ({"model": None}, 400, "model"),
        ({"training_file": "file-" + "0" * 32}, 404, "training_file"),
        ({"validation_file": "file-" + "0" * 32}, 404, "validation_file"),
    ],
)
def test_create_job_errors(api, base_model, dataset, body, status, param):
    response, delay = create_job(api, dataset, **body)
    assert_error(response, status, param=param)
    assert not FineTuneJob.objects.exists()


def test_bad_json_is_a_400(api, base_model):
    response = api.post("/v1/fine_tuning/jobs", b"{not json", content_type="application/json")
    assert_error(response, 400, code="invalid_json")


def test_list_get_cancel_and_pagination(api, base_model, dataset):
    ids = [create_job(api, dataset)[0].json()["id"] for _ in range(3)]
    page = api.get("/v1/fine_tuning/jobs?limit=2").json()
    assert page["object"] == "list" and [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = api.get(f"/v1/fine_tuning/jobs?limit=2&after={ids[1]}").json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and not rest["has_more"]
    assert_error(api.get("/v1/fine_tuning/jobs?limit=0"), 400, param="limit")
    assert api.get(f"/v1/fine_tuning/jobs/{ids[0]}").json()["id"] == ids[0]
    cancelled = api.post(f"/v1/fine_tuning/jobs/{ids[0]}/cancel").json()
    assert cancelled["status"] == "cancelled" and isinstance(cancelled["finished_at"], int)
    assert_error(api.post(f"/v1/fine_tuning/jobs/{ids[0]}/cancel"), 400, code="invalid_state")
    assert_error(api.get("/v1/fine_tuning/jobs/ftjob-" + "0" * 32), 404)


@pytest.mark.parametrize(("action", "shown", "flag"), [("cancel", "cancelled", "cancel"), ("pause", "paused", "pause")])
def test_stopping_a_running_job_answers_the_requested_state(api, base_model, dataset, action, shown, flag):
    job_id = create_job(api, dataset)[0].json()["id"]
    job = FineTuneJob.objects.get()
    FineTuneJob.objects.filter(id=job.id).update(status=JobStatus.RUNNING)
    answer = api.post(f"/v1/fine_tuning/jobs/{job_id}/{action}").json()
    assert answer["status"] == shown
    # The worker has not stopped yet: the row is still running, and the OpenAI view keeps the requested state.
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.stop_requested == flag
    assert api.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == shown
    assert api.get("/v1/fine_tuning/jobs").json()["data"][0]["status"] == shown


def test_file_in_use_cannot_be_deleted(api, base_model, dataset):
    create_job(api, dataset)
    assert_error(api.delete(f"/v1/files/file-{dataset.id.hex}"), 409, code="file_in_use")


def test_another_users_job_does_not_exist(api, api_bob, base_model, dataset):
    job_id = create_job(api, dataset)[0].json()["id"]
    for response in (
        api_bob.get(f"/v1/fine_tuning/jobs/{job_id}"),
        api_bob.post(f"/v1/fine_tuning/jobs/{job_id}/cancel"),
        api_bob.get(f"/v1/fine_tuning/jobs/{job_id}/events"),
        api_bob.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints"),
    ):
        assert_error(response, 404)
    assert api_bob.get("/v1/fine_tuning/jobs").json()["data"] == []
    # Nor can bob train on alice's file.
    response, _ = create_job(api_bob, dataset)
    assert_error(response, 404, param="training_file")


def succeed(job: FineTuneJob) -> FineTuneJob:
    FineTuneJob.objects.filter(id=job.id).update(status=JobStatus.SUCCEEDED, step=2, total_steps=2)
    Adapter.objects.create(job=job, folder=f"jobs/{job.id}/adapter", zip_file="x.zip", size_bytes=1, sha256="0")
    return FineTuneJob.objects.get(id=job.id)


def test_events_are_messages_and_metrics_newest_first(api, base_model, dataset):
    job_id = create_job(api, dataset)[0].json()["id"]
    job = FineTuneJob.objects.get()
    JobEvent.objects.create(job=job, kind="setup", message="loaded the model")
    MetricPoint.objects.create(job=job, step=1, train_loss=2.5)
    MetricPoint.objects.create(job=job, step=2, train_loss=1.5, eval_loss=1.7, extra={"total_steps": 2})
    JobEvent.objects.create(job=job, kind="error", message="oops")
    page = api.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=3").json()
    assert page["object"] == "list" and page["has_more"]
    first, second, third = page["data"]
    assert first["type"] == "message" and first["message"] == "oops" and first["level"] == "error"
    assert first["object"] == "fine_tuning.job.event" and isinstance(first["created_at"], int)
    assert second["type"] == "metrics" and second["data"] == {
        "step": 2,
        "total_steps": 2,
        "train_loss": 1.5,
        "valid_loss": 1.7,
    }
    assert third["data"]["step"] == 1 and "valid_loss" not in third["data"]
    rest = api.get(f"/v1/fine_tuning/jobs/{job_id}/events?after={third['id']}").json()
    assert [e["message"] for e in rest["data"]] == ["loaded the model"] and not rest["has_more"]
    checkpoints = api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()
    assert checkpoints["object"] == "list" and checkpoints["data"] == []


def test_models_lists_bases_and_own_fine_tuned_models(api, api_bob, user, base_model, dataset):
    create_job(api, dataset, suffix="colours")
    job = succeed(FineTuneJob.objects.get())
    ft_id = f"ft:tiny-llama:colours:{job.short_id}"
    assert api.get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}").json()["fine_tuned_model"] == ft_id
    models = api.get("/v1/models").json()
    assert models["object"] == "list"
    by_id = {m["id"]: m for m in models["data"]}
    assert by_id["tiny-llama"] == {
        "id": "tiny-llama",
        "object": "model",
        "created": by_id["tiny-llama"]["created"],
        "owned_by": "lora-studio",
    }
    assert by_id[ft_id]["object"] == "model"
    assert api.get(f"/v1/models/{ft_id}").json()["id"] == ft_id
    assert [m["id"] for m in api_bob.get("/v1/models").json()["data"]] == ["tiny-llama"]
    assert_error(api_bob.get(f"/v1/models/{ft_id}"), 404, code="model_not_found")


def test_fine_tuned_name_falls_back_to_the_username(api, base_model, dataset):
    create_job(api, dataset)
    job = succeed(FineTuneJob.objects.get())
    assert (
        api.get("/v1/fine_tuning/jobs").json()["data"][0]["fine_tuned_model"] == f"ft:tiny-llama:alice:{job.short_id}"
    )
