"""DPO / ORPO jobs through the form, REST and the OpenAI API: the method must suit the dataset (a 4xx naming
the field), and a DPO job trains, logs reward metrics, evaluates preferences and packages its adapter."""

import io
import json
import uuid
import zipfile
from unittest import mock

import pytest
from rest_framework.test import APIClient

from jobs.common.storage import media_path, media_relative
from jobs.datasets.models import Dataset
from jobs.training import tasks as train_tasks
from jobs.training.models import FineTuneJob, JobStatus, MetricPoint
from tests.worker.test_preference import colour_pairs
from worker.data.normalized import write_normalized_jsonl

FAST = {
    "rank": 8,
    "alpha": 16,
    "dropout": 0.0,
    "target_preset": "all_linear",
    "epochs": 2,
    "learning_rate": 0.02,
    "batch_size": 8,
    "max_seq_length": 64,
    "warmup_ratio": 0,
    "seed": 1,
}


@pytest.fixture
def pairs_dataset(user):
    """A preference dataset as the upload path leaves one: its pairs in a normalised JSONL file."""
    path = media_path(f"datasets/{uuid.uuid4().hex}.normalized.jsonl")
    write_normalized_jsonl(colour_pairs(40, 1), path)
    return Dataset.objects.create(
        owner=user,
        name="colour pairs",
        file=media_relative(path),
        normalized_file=media_relative(path),
        format="jsonl",
        schema="preference",
        rows=40,
        size_bytes=path.stat().st_size,
        sha256="0" * 64,
        stats={"chars": 40 * 30},
    )


@pytest.fixture
def rest(user):
    api = APIClient()
    api.force_authenticate(user)
    return api


def rest_create(api, dataset, base_model, config, **extra):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        return api.post(
            "/api/v1/jobs/",
            {"dataset": str(dataset.id), "base_model": str(base_model.id), "config": config, **extra},
            format="json",
        )


def test_the_method_must_suit_the_dataset(rest, client_in, base_model, dataset, pairs_dataset):
    for data, config, field in (
        (dataset, {"method": "dpo"}, "method"),
        (pairs_dataset, {}, "method"),
        (pairs_dataset, {"method": "orpo", "beta": 0}, "beta"),
        (pairs_dataset, {"method": "dpo", "packing": True}, "packing"),
    ):
        response = rest_create(rest, data, base_model, config)
        assert response.status_code == 400 and response.json()["error"]["field"] == field, response.json()
    wrong_validation = rest_create(
        rest, pairs_dataset, base_model, {"method": "dpo"}, validation="dataset", validation_dataset=str(dataset.id)
    )
    assert wrong_validation.status_code == 400
    assert wrong_validation.json()["error"]["field"] == "validation_dataset"
    assert not FineTuneJob.objects.exists()

    form = {
        "name": "x",
        "base_model": base_model.id,
        "dataset": dataset.id,
        "method": "orpo",
        "beta": 0.1,
        "validation": "none",
        **FAST,
        "lr_scheduler": "linear",
        "grad_accum": 1,
        "weight_decay": 0,
        "bias": "none",
    }
    response = client_in.post("/jobs/new/", form)
    assert response.status_code == 400
    assert "method" in response.context["form"].errors
    assert "preference pairs" in response.context["form"].errors["method"][0]


def test_openai_dpo_method(api, user, base_model, dataset, pairs_dataset):
    def create(data, method):
        with mock.patch("jobs.training.tasks.job_run.delay"):
            return api.post(
                "/v1/fine_tuning/jobs",
                {"model": "tiny-llama", "training_file": f"file-{data.id.hex}", "method": method},
                format="json",
            )

    response = create(pairs_dataset, {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3, "n_epochs": 1}}})
    assert response.status_code == 200, response.content
    assert response.json()["method"] == {
        "type": "dpo",
        "dpo": {"hyperparameters": {"beta": 0.3, "n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 1.0}},
    }
    config = FineTuneJob.objects.get(owner=user).config
    assert (config["method"], config["beta"], config["epochs"]) == ("dpo", 0.3, 1)
    for data, method, param in (
        (dataset, {"type": "dpo"}, "method.type"),
        (pairs_dataset, {"type": "supervised"}, "method.type"),
        (pairs_dataset, {"type": "rlhf"}, "method.type"),
        (pairs_dataset, {"type": "dpo", "dpo": {"hyperparameters": {"beta": -1}}}, "method.dpo.hyperparameters.beta"),
        (
            pairs_dataset,
            {"type": "orpo", "orpo": {"hyperparameters": {"gamma": 1}}},
            "method.orpo.hyperparameters.gamma",
        ),
    ):
        error = create(data, method)
        assert error.status_code == 400 and error.json()["error"]["param"] == param, error.json()
    assert FineTuneJob.objects.count() == 1


def test_dpo_job_trains_logs_rewards_evaluates_and_packages(rest, api, client_in, user, base_model, pairs_dataset):
    response = rest_create(
        rest,
        pairs_dataset,
        base_model,
        {"method": "dpo", "beta": 0.1, **FAST},
        validation="split",
        validation_percent=20,
    )
    assert response.status_code == 201, response.json()
    job = FineTuneJob.objects.get(owner=user)
    assert train_tasks.job_run(str(job.id)) == "succeeded"
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.total_steps == 8
    last = MetricPoint.objects.get(job=job, step=8).as_event()
    assert {"reward_margin", "reward_accuracy", "eval_reward_margin", "eval_reward_accuracy"} <= last.keys()
    assert last["eval_loss"] is not None and last["reward_margin"] > 0

    page = client_in.get(f"/jobs/{job.id}/").content.decode()
    assert 'id="reward-chart"' in page and "held-out pairs" in page and "Preference accuracy" in page
    response = client_in.get(f"/jobs/{job.id}/download/")
    zf = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    card = zf.read("README.md").decode()
    assert "by DPO" in card and "preference accuracy" in card and "- dpo" in card
    evaluation = json.loads(zf.read("evaluation.json"))
    assert evaluation["kind"] == "preference" and evaluation["examples"] == 8
    assert json.loads(zf.read("training_config.json"))["method"] == "dpo"

    # DPO on top of that job: its adapter is the start and the reference; its adapter settings are taken over.
    api_key_client = api
    other = rest_create(rest, pairs_dataset, base_model, {"method": "dpo", "start_from": "nope"})
    assert other.status_code == 400 and other.json()["error"]["field"] == "start_from"
    unknown = rest_create(rest, pairs_dataset, base_model, {"method": "dpo", "start_from": str(uuid.uuid4())})
    assert unknown.status_code == 400 and unknown.json()["error"] == {"field": "start_from", "message": "no such job"}
    on_top = rest_create(
        rest,
        pairs_dataset,
        base_model,
        {"method": "dpo", **FAST, "rank": 4, "epochs": 1, "start_from": str(job.id)},
        validation="split",
    )
    assert on_top.status_code == 201, on_top.json()
    assert on_top.json()["config"]["rank"] == 8 and on_top.json()["config"]["start_from"] == str(job.id)
    second = FineTuneJob.objects.get(id=on_top.json()["id"])
    assert train_tasks.job_run(str(second.id)) == "succeeded"
    first = MetricPoint.objects.get(job=second, step=1).as_event()
    assert abs(first["loss"] - 0.693147) < 1e-5 and first["reward_margin"] == 0.0  # policy == reference at start
    assert second.events.filter(message__contains=f"starting from the adapter of job {job.id}").exists()

    # The OpenAI API: fine-tuning a fine-tuned model (`ft:...`) starts from its adapter the same way.
    from jobs.openai_compat.fine_tuning import fine_tuned_model

    job.refresh_from_db()
    with mock.patch("jobs.training.tasks.job_run.delay"):
        response = api_key_client.post(
            "/v1/fine_tuning/jobs",
            {
                "model": fine_tuned_model(job),
                "training_file": f"file-{pairs_dataset.id.hex}",
                "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
            },
            format="json",
        )
    assert response.status_code == 200, response.content
    assert FineTuneJob.objects.get(id=uuid.UUID(response.json()["id"][6:])).config["start_from"] == str(job.id)
    queued = response.json()["id"][6:]
    not_done = rest_create(rest, pairs_dataset, base_model, {"method": "dpo", "start_from": queued})
    assert not_done.status_code == 400 and "has no adapter" in not_done.json()["error"]["message"]
