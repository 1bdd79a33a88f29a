"""`devices` (one job on several processes) through the form, REST and the OpenAI `lora` extras, and a
two-rank job run by the train task: rank 0's metrics and adapter land in the database like one device's."""

from unittest import mock

from jobs.training import services as job_services
from jobs.training import tasks as train_tasks
from jobs.training.models import Adapter, FineTuneJob, JobStatus, MetricPoint
from jobs.training.plan import job_plan
from tests.training.test_jobs import form_data, submit
from worker.config import TrainConfig


def rest_job(api, dataset, base_model, **config):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        return api.post(
            "/api/v1/jobs/",
            {"dataset": str(dataset.id), "base_model": str(base_model.id), "config": {"batch_size": 4, **config}},
            format="json",
        )


def test_rest_takes_devices_and_names_the_field_when_refused(api, base_model, dataset, settings):
    settings.TRAIN_MAX_DEVICES = 2
    response = rest_job(api, dataset, base_model, devices=2)
    assert response.status_code == 201, response.content
    assert response.json()["config"]["devices"] == 2 and FineTuneJob.objects.get().config["devices"] == 2
    for bad, words in (
        (3, "at most 2 on this installation (setting TRAIN_MAX_DEVICES)"),
        (0, "must be between 1 and 64"),
        ("two", "must be a whole number"),
        (8, "at most the batch size (4)"),
    ):
        response = rest_job(api, dataset, base_model, devices=bad)
        assert response.status_code == 400, (bad, response.content)
        error = response.json()["error"]
        assert error["field"] == "devices" and words in error["message"], error
    assert FineTuneJob.objects.count() == 1


def test_openai_lora_extra_and_the_form_take_devices(
    api, client_in, base_model, dataset, settings, django_capture_on_commit_callbacks
):
    settings.TRAIN_MAX_DEVICES = 2
    payload = {
        "model": "tiny-llama",
        "training_file": f"file-{dataset.id.hex}",
        "hyperparameters": {"batch_size": 4},
        "lora": {"devices": 2},
    }
    with mock.patch("jobs.training.tasks.job_run.delay"):
        created = api.post("/v1/fine_tuning/jobs", payload, format="json")
        refused = api.post("/v1/fine_tuning/jobs", {**payload, "lora": {"devices": 5}}, format="json")
    assert created.status_code == 200, created.content
    assert created.json()["lora"]["devices"] == 2
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "lora.devices"

    response, _ = submit(client_in, form_data(base_model, dataset, devices=3), django_capture_on_commit_callbacks)
    assert response.status_code == 400
    html = response.content.decode()
    assert "TRAIN_MAX_DEVICES" in html[html.index('id="field-devices"') :][:1500]
    response, _ = submit(client_in, form_data(base_model, dataset, devices=2), django_capture_on_commit_callbacks)
    assert response.status_code == 302
    assert FineTuneJob.objects.order_by("created").last().config["devices"] == 2


def test_the_train_task_runs_a_job_on_two_ranks(user, base_model, dataset, settings):
    """The supervisor in the task's process serves rank 0's reporter (DbReporter, fenced by the claim)."""
    config = TrainConfig(
        rank=8,
        alpha=16,
        dropout=0.0,
        target_preset="all_linear",
        max_steps=3,
        learning_rate=0.01,
        batch_size=4,
        warmup_ratio=0.0,
        final_eval=False,
        devices=2,
    )
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=config))
    assert train_tasks.job_run(str(job.id)) == "succeeded"
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.step == 3
    assert list(MetricPoint.objects.filter(job=job).order_by("step").values_list("step", flat=True)) == [1, 2, 3]
    assert Adapter.objects.filter(job=job).exists()
    assert job.events.filter(kind="saved").count() == 1


def test_sharding_through_rest_openai_and_the_form_and_on_the_job_page(
    api, client_in, base_model, dataset, settings, django_capture_on_commit_callbacks
):
    """`sharding` travels as `devices` does: REST config, the OpenAI `lora` extras, the form's Custom settings
    section; refusals name the field; the job page lists it with the other settings."""
    settings.TRAIN_MAX_DEVICES = 2
    response = rest_job(api, dataset, base_model, devices=2, sharding="fsdp")
    assert response.status_code == 201, response.content
    assert response.json()["config"]["sharding"] == "fsdp"
    for bad, words in (
        (dict(sharding="zero3"), "must be one of none, fsdp"),
        (dict(sharding="fsdp"), "needs at least 2"),
        (dict(sharding="fsdp", devices=2, qlora=True), "not available with QLoRA"),
    ):
        response = rest_job(api, dataset, base_model, **bad)
        assert response.status_code == 400, (bad, response.content)
        error = response.json()["error"]
        assert error["field"] == "sharding" and words in error["message"], error

    payload = {
        "model": "tiny-llama",
        "training_file": f"file-{dataset.id.hex}",
        "hyperparameters": {"batch_size": 4},
        "lora": {"devices": 2, "sharding": "fsdp"},
    }
    with mock.patch("jobs.training.tasks.job_run.delay"):
        created = api.post("/v1/fine_tuning/jobs", payload, format="json")
        refused = api.post("/v1/fine_tuning/jobs", {**payload, "lora": {"sharding": "fsdp"}}, format="json")
    assert created.status_code == 200, created.content
    assert created.json()["lora"]["sharding"] == "fsdp"
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "lora.sharding"

    response, _ = submit(client_in, form_data(base_model, dataset, sharding="fsdp"), django_capture_on_commit_callbacks)
    assert response.status_code == 400
    html = response.content.decode()
    assert "needs at least 2" in html[html.index('id="field-sharding"') :][:1500]
    response, _ = submit(
        client_in, form_data(base_model, dataset, devices=2, sharding="fsdp"), django_capture_on_commit_callbacks
    )
    assert response.status_code == 302
    job = FineTuneJob.objects.order_by("created").last()
    assert job.config["sharding"] == "fsdp"
    page = client_in.get(f"/jobs/{job.id}/").content.decode()
    assert '<th title="sharding">Sharding (with several devices)</th><td>fsdp</td>' in page
