"""The `liger` setting through REST, the OpenAI `lora` extras and the form's Custom settings; the job page's
MFU figure (a metric the engine reports only where the GPU's peak is known)."""

from unittest import mock

from jobs.training.models import FineTuneJob, MetricPoint
from tests.training.test_devices import rest_job
from tests.training.test_jobs import form_data, submit


def test_liger_through_rest_openai_and_the_form(
    api, client_in, base_model, dataset, django_capture_on_commit_callbacks
):
    response = rest_job(api, dataset, base_model, liger=True)
    assert response.status_code == 201, response.content
    assert response.json()["config"]["liger"] is True
    assert rest_job(api, dataset, base_model).json()["config"]["liger"] is False
    refused = rest_job(api, dataset, base_model, liger="fast please")
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "liger"

    payload = {
        "model": "tiny-llama",
        "training_file": f"file-{dataset.id.hex}",
        "hyperparameters": {"batch_size": 4},
        "lora": {"liger": True},
    }
    with mock.patch("jobs.training.tasks.job_run.delay"):
        created = api.post("/v1/fine_tuning/jobs", payload, format="json")
        bad = api.post("/v1/fine_tuning/jobs", {**payload, "lora": {"liger": "yes"}}, format="json")
    assert created.status_code == 200, created.content
    assert created.json()["lora"]["liger"] is True
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "lora.liger"

    html = client_in.get("/jobs/new/").content.decode()
    assert 'name="liger"' in html and "Liger kernels (CUDA)" in html
    response, _ = submit(client_in, form_data(base_model, dataset, liger="on"), django_capture_on_commit_callbacks)
    assert response.status_code == 302
    job = FineTuneJob.objects.order_by("created").last()
    assert job.config["liger"] is True
    page = client_in.get(f"/jobs/{job.id}/").content.decode()
    assert '<th title="liger">Liger kernels (CUDA)</th><td>' in page


def test_the_job_page_has_an_mfu_figure_fed_by_the_metric_points(
    client_in, base_model, dataset, django_capture_on_commit_callbacks
):
    response, _ = submit(client_in, form_data(base_model, dataset), django_capture_on_commit_callbacks)
    job = FineTuneJob.objects.order_by("created").last()
    page = client_in.get(f"/jobs/{job.id}/").content.decode()
    assert '<span id="stat-mfu"' in page and 'id="stat-mfu"' in page
    assert page[page.index('id="stat-mfu"') :].split(">", 1)[1].startswith("–")  # unknown until a point says
    point = MetricPoint.objects.create(
        job=job, step=1, epoch=0.1, train_loss=2.0, tokens_per_s=1000.0, extra={"mfu": 0.42}
    )
    assert point.as_event()["mfu"] == 0.42 and point.as_event()["tokens_per_s"] == 1000.0
