"""The engine's knobs reach the job through the form and the REST API, validated against the model."""

from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from jobs.datasets import services as dataset_services
from jobs.training.models import FineTuneJob
from tests.training.test_jobs import form_data, submit
from worker.config import PRESETS


@pytest.fixture
def dataset(user, chat_file):
    return dataset_services.dataset_create(owner=user, upload=SimpleUploadedFile("chat.jsonl", chat_file.read_bytes()))


def test_form_stores_the_new_knobs(client_in, base_model, dataset, django_capture_on_commit_callbacks):
    data = form_data(
        base_model,
        dataset,
        init_lora_weights="pissa",
        modules_to_save="lm_head",
        packing="on",
        early_stopping_patience=3,
        early_stopping_threshold=0.01,
        eval_every=5,
        keep_best="on",
        optimizer="adamw",
        max_grad_norm=0.5,
    )
    response, delay = submit(client_in, data, django_capture_on_commit_callbacks)
    assert response.status_code == 302, response.content.decode()[:2000]
    config = FineTuneJob.objects.get().config
    assert config["init_lora_weights"] == "pissa" and config["modules_to_save"] == ["lm_head"]
    assert config["packing"] is True and config["keep_best"] is True and config["max_grad_norm"] == 0.5
    assert (config["early_stopping_patience"], config["early_stopping_threshold"], config["eval_every"]) == (3, 0.01, 5)
    assert delay.called


def test_form_left_empty_optional_numbers_keep_their_defaults(
    client_in, base_model, dataset, django_capture_on_commit_callbacks
):
    data = form_data(base_model, dataset, eval_every="", save_every="", early_stopping_patience="")
    response, _ = submit(client_in, data, django_capture_on_commit_callbacks)
    assert response.status_code == 302
    config = FineTuneJob.objects.get().config
    assert (config["eval_every"], config["save_every"], config["early_stopping_patience"]) == (0, 50, 0)


def test_unknown_module_to_save_is_shown_beside_the_field(
    client_in, base_model, dataset, django_capture_on_commit_callbacks
):
    response, delay = submit(
        client_in, form_data(base_model, dataset, modules_to_save="lm_head, wte"), django_capture_on_commit_callbacks
    )
    assert response.status_code == 400
    html = response.content.decode()
    field = html[html.index('id="field-modules_to_save"') :][:1500]
    assert "&#x27;wte&#x27; is not a module this model can train in full; valid names:" in field
    assert "lm_head" in field and FineTuneJob.objects.count() == 0 and not delay.called


def test_pissa_with_qlora_is_refused_on_its_field(client_in, base_model, dataset, django_capture_on_commit_callbacks):
    response, _ = submit(
        client_in,
        form_data(base_model, dataset, init_lora_weights="pissa", qlora="on"),
        django_capture_on_commit_callbacks,
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "PiSSA rewrites the base weights" in html[html.index('id="field-init_lora_weights"') :][:1500]


def test_form_offers_presets_with_their_values(client_in, base_model, dataset):
    html = client_in.get(f"/jobs/new/?dataset={dataset.id}").content.decode()
    assert 'value="balanced" id="goal-balanced" checked>' in html and 'id="goal-quality"' in html
    assert 'id="presets"' in html and '"learning_rate": 0.0005' in html


def test_rest_config_takes_a_preset_with_overrides(user, base_model, dataset, django_capture_on_commit_callbacks):
    api = APIClient()
    api.force_authenticate(user)
    with mock.patch("jobs.training.tasks.job_run.delay"), django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            "/api/v1/jobs/",
            {
                "dataset": str(dataset.id),
                "base_model": str(base_model.id),
                "config": {"preset": "quality", "epochs": 1},
            },
            format="json",
        )
    assert response.status_code == 201, response.json()
    config = response.json()["config"]
    assert config["target_preset"] == "all_linear" and config["lr_scheduler"] == "cosine"
    assert config["learning_rate"] == PRESETS["quality"]["learning_rate"] and config["epochs"] == 1
    bad = api.post(
        "/api/v1/jobs/",
        {"dataset": str(dataset.id), "base_model": str(base_model.id), "config": {"preset": "turbo"}},
        format="json",
    )
    assert bad.status_code == 400 and "preset" in bad.content.decode()
    unknown = api.post(
        "/api/v1/jobs/",
        {"dataset": str(dataset.id), "base_model": str(base_model.id), "config": {"modules_to_save": ["wte"]}},
        format="json",
    )
    assert unknown.status_code == 400 and "modules_to_save" in unknown.content.decode()


def test_the_job_form_sections_hold_every_field_once(user):
    from jobs.training.forms import FIELDSETS, MAIN_FIELDS, JobForm

    form = JobForm(owner=user)
    listed = [*MAIN_FIELDS, *(name for _, names in FIELDSETS for name in names)]
    assert sorted(listed) == sorted(form.fields) and len(listed) == len(set(listed))
    shown = [f.name for f, _term in form.main_fields] + ["preset"]
    shown += [f.name for _, fields in form.custom_fieldsets for f, _term in fields]
    assert shown == listed and [legend for legend, _ in form.custom_fieldsets][0] == "What to learn from"


def test_precision_through_the_form_rest_and_the_run(
    client_in, user, base_model, dataset, monkeypatch, django_capture_on_commit_callbacks
):
    """The setting travels to the config; the run records the precision it resolved (auto -> bf16 on a CPU with
    native bf16) on the job, which the job page, the API and the model card show."""
    import io
    import zipfile

    from jobs.training import tasks as train_tasks
    from worker.modeling import CPU_BF16_ENV

    html = client_in.get("/jobs/new/").content.decode()
    assert 'name="precision"' in html and '<option value="auto" selected>' in html
    response, _ = submit(
        client_in, form_data(base_model, dataset, precision="fp64"), django_capture_on_commit_callbacks
    )
    assert response.status_code == 400 and not FineTuneJob.objects.exists()
    assert "fp64 is not one of the available choices" in response.content.decode()
    response, _ = submit(client_in, form_data(base_model, dataset, epochs=1), django_capture_on_commit_callbacks)
    assert response.status_code == 302, response.content.decode()[:2000]
    job = FineTuneJob.objects.get()
    assert job.config["precision"] == "auto" and job.precision == ""

    api = APIClient()
    api.force_authenticate(user)
    bad = api.post(
        "/api/v1/jobs/",
        {"dataset": str(dataset.id), "base_model": str(base_model.id), "config": {"precision": "int8"}},
        format="json",
    )
    assert bad.status_code == 400 and "precision" in bad.content.decode()

    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert train_tasks.job_run(str(job.id)) == "succeeded"
    job.refresh_from_db()
    assert job.precision == "bf16"
    assert api.get(f"/api/v1/jobs/{job.id}/").json()["precision"] == "bf16"
    page = client_in.get(f"/jobs/{job.id}/").content.decode()
    assert '<span id="stat-precision"' in page and "precision bf16" in page
    assert page.split('id="stat-precision"')[1].split("</span>")[0].endswith(">bf16")
    zf = zipfile.ZipFile(io.BytesIO(b"".join(client_in.get(f"/jobs/{job.id}/download/").streaming_content)))
    assert "- Precision: bf16 (the frozen base computes in bf16" in zf.read("README.md").decode()
