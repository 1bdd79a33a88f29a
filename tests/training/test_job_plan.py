"""One plan per job: every caller (the form, REST, the OpenAI API, retry) plans a job with `job_plan` and creates
it with `job_create`, so the same bad input gets the same error everywhere; the estimate is the plan's; files are
written before the row and swept when the insert fails; planning reads no model and no dataset per request."""

import json
from pathlib import Path
from unittest import mock

import pytest
from django.db import DatabaseError, connection

from jobs.common import blobs
from jobs.datasets.models import Dataset
from jobs.training import services as job_services
from jobs.training.apis import EstimateOutput
from jobs.training.files import job_output_dir
from jobs.training.forms import CONFIG_FIELDS
from jobs.training.models import FineTuneJob
from jobs.training.plan import job_plan
from jobs.training.views import estimate_json
from worker.config import TrainConfig
from worker.errors import InputError

pytestmark = pytest.mark.django_db


def form_values(base_model, dataset, config=None, **extra) -> dict:
    """The job form as a person would send it: every setting at TrainConfig's value (`config` over its defaults)."""
    cfg = TrainConfig.from_dict(config or {})
    values = {}
    for name in CONFIG_FIELDS:
        value = getattr(cfg, name)
        values[name] = ", ".join(value) if isinstance(value, tuple) else value
    return {"name": "", "base_model": base_model.id, "dataset": dataset.id, "validation": "none", **values, **extra}


def rest_body(base_model, dataset, config=None, **extra) -> dict:
    return {
        "dataset": str(dataset.id),
        "base_model": str(base_model.id),
        "config": config or {},
        "validation": "none",
        **extra,
    }


def openai_body(dataset, config=None, **extra) -> dict:
    """An OpenAI create request with the same settings: the method as OpenAI's `method`, the rest as `lora`."""
    config = dict(config or {})
    body = {"model": "tiny-llama", "training_file": f"file-{dataset.id.hex}", **extra}
    if "method" in config:
        body["method"] = {"type": config.pop("method")}
    if config:
        body["lora"] = config
    return body


CASES = [
    dict(
        id="the validation dataset is the training one",
        same_validation=True,
        field="validation_dataset",
        param="validation_file",
        message="must differ from the training dataset (or use a split)",
    ),
    dict(
        id="dpo on plain examples",
        config={"method": "dpo"},
        field="method",
        param="method.type",
        message="dpo trains on preference pairs",
    ),
    dict(
        id="an unknown custom module",
        config={"target_preset": "custom", "target_modules": ["wq"]},
        field="target_modules",
        param="lora.target_modules",
        message="",
    ),
    dict(
        id="more devices than this installation has",
        config={"devices": 2},
        settings={"TRAIN_MAX_DEVICES": 1},
        field="devices",
        param="lora.devices",
        message="at most 1 on this installation",
    ),
    dict(
        id="a job that fits nowhere",
        settings={"TRAIN_MEMORY_LIMIT_MB": 0.01},
        field="config",
        param="hyperparameters",
        message="this job would not fit in memory",
    ),
    dict(
        id="over the active jobs quota",
        settings={"QUOTA_ACTIVE_JOBS": 0},
        field="quota",
        param="active_jobs",
        message="limit reached: queued, running and paused jobs",
        status=429,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_the_same_bad_input_gets_the_same_error_from_every_caller(case, settings, client_in, api, base_model, dataset):
    for name, value in case.get("settings", {}).items():
        setattr(settings, name, value)
    config, status = case.get("config"), case.get("status", 400)
    same = {"validation": "dataset", "validation_dataset": dataset.id} if case.get("same_validation") else {}
    with mock.patch("jobs.training.tasks.job_run.delay") as delay:
        form = client_in.post("/jobs/new/", form_values(base_model, dataset, config, **same))
        rest = api.post(
            "/api/v1/jobs/",
            rest_body(base_model, dataset, config, **{k: str(v) for k, v in same.items()}),
            format="json",
        )
        openai = api.post(
            "/v1/fine_tuning/jobs",
            openai_body(dataset, config, **({"validation_file": f"file-{dataset.id.hex}"} if same else {})),
            format="json",
        )
    assert (form.status_code, rest.status_code, openai.status_code) == (status, status, status)
    assert not FineTuneJob.objects.exists() and not delay.called

    error = rest.json()["error"]
    assert error["field"] == case["field"] and error["message"].startswith(case["message"]), error
    message = error["message"]
    errors = form.context["form"].errors
    beside = case["field"] if case["field"] in form.context["form"].fields else "__all__"
    assert {message, message[0].upper() + message[1:]} & set(errors[beside]), errors
    shaped = openai.json()["error"]
    assert shaped["param"] == case["param"], shaped
    assert shaped["message"] in (f"{case['param']}: {message}", message), shaped

    if status == 400 and case["field"] != "config":  # the estimate is the plan without the refusal: same errors
        estimate = api.post(
            "/api/v1/estimate/",
            rest_body(base_model, dataset, config, **{k: str(v) for k, v in same.items()}),
            format="json",
        )
        assert estimate.status_code == 400 and estimate.json()["error"] == error
        form_estimate = client_in.post("/jobs/estimate/", form_values(base_model, dataset, config, **same))
        assert form_estimate.status_code == 400
        assert message[0].upper() + message[1:] in [e["message"] for e in form_estimate.json()["errors"][beside]]


def test_the_estimate_endpoints_answer_the_plans_estimate(settings, api, client_in, user, base_model, dataset):
    def roundtrip(data):
        return json.loads(json.dumps(data))

    for limit in (0, 0.01):  # fits this machine; fits nowhere (shown with advice, not refused)
        settings.TRAIN_MEMORY_LIMIT_MB = limit
        plan = job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(rank=4), refuse=False)
        assert plan.estimate.fits == (limit == 0) and bool(plan.refusal) == (limit != 0)
        rest = api.post("/api/v1/estimate/", rest_body(base_model, dataset, {"rank": 4}), format="json")
        assert rest.status_code == 200 and rest.json() == roundtrip(EstimateOutput(plan.estimate).data)
        form = client_in.post("/jobs/estimate/", form_values(base_model, dataset, {"rank": 4}))
        assert form.status_code == 200 and form.json()["estimate"] == roundtrip(
            estimate_json(plan.estimate, dataset=dataset)
        )
    settings.TRAIN_MEMORY_LIMIT_MB = 0
    with mock.patch("jobs.training.tasks.job_run.delay"):
        created = api.post("/api/v1/jobs/", rest_body(base_model, dataset, {"rank": 4}), format="json")
    assert created.status_code == 201
    plan = job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(rank=4), refuse=False)
    assert FineTuneJob.objects.get().memory_mb == pytest.approx(plan.memory_mb)


def test_files_are_written_before_the_row_and_a_failed_insert_leaves_none(settings, user, base_model, dataset):
    plan = job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(), validation="split")
    depth = len(connection.atomic_blocks)  # the test's own transaction
    published = []

    def publish(store, name):
        assert len(connection.atomic_blocks) == depth, "published to the store inside a transaction"
        assert not FineTuneJob.objects.exists(), "the files come first, then the row"
        published.append(name)

    with (
        mock.patch.object(blobs.LocalStore, "publish", autospec=True, side_effect=publish),
        mock.patch.object(FineTuneJob, "save", side_effect=DatabaseError("insert failed")),
        pytest.raises(DatabaseError),
    ):
        job_services.job_create(plan=plan)
    assert len(published) == 1 and published[0].endswith("/data")
    jobs_folder = Path(settings.MEDIA_ROOT) / "jobs"
    assert not jobs_folder.exists() or not any(jobs_folder.iterdir()), "the written files are swept"
    assert not FineTuneJob.objects.exists()

    with (
        mock.patch("jobs.training.tasks.job_run.delay"),
        mock.patch.object(blobs.LocalStore, "publish", autospec=True, side_effect=publish),
    ):
        job = job_services.job_create(plan=plan)
    assert (job_output_dir(job) / "data/eval.jsonl").is_file() and job.validation["eval_rows"] == 1


def test_planning_loads_no_model_tokenizer_or_dataset_per_request(api, base_model, dataset):
    from jobs.datasets import selectors as dataset_selectors
    from worker import modeling

    shape = {"rank": 4, "target_preset": "all_linear", "modules_to_save": ["lm_head"]}
    with mock.patch("jobs.training.tasks.job_run.delay"):
        assert api.post("/api/v1/jobs/", rest_body(base_model, dataset, shape), format="json").status_code == 201
    with (
        mock.patch.object(modeling, "meta_model", wraps=modeling.meta_model) as meta,
        mock.patch("transformers.AutoConfig.from_pretrained") as config_reads,
        mock.patch("transformers.AutoTokenizer.from_pretrained") as tokenizer_loads,
        mock.patch.object(
            dataset_selectors, "read_normalized_jsonl", wraps=dataset_selectors.read_normalized_jsonl
        ) as dataset_reads,
    ):
        for epochs in (1, 2, 3):  # settings that change no shape: the model's is built once, then kept
            body = rest_body(base_model, dataset, {**shape, "epochs": epochs, "learning_rate": 0.001 * epochs})
            estimate = api.post("/api/v1/estimate/", body, format="json")
            assert estimate.status_code == 200, estimate.json()
        assert dataset_reads.call_count == 0, "the estimate reads no dataset"
        with mock.patch("jobs.training.tasks.job_run.delay"):
            for epochs in (1, 2, 3):
                body = rest_body(base_model, dataset, {**shape, "epochs": epochs})
                assert api.post("/api/v1/jobs/", body, format="json").status_code == 201
    assert meta.call_count == config_reads.call_count == tokenizer_loads.call_count == 0
    assert dataset_reads.call_count == 0, "the snapshot each created job writes is copied, not parsed"


def test_a_retry_is_planned_and_copies_the_snapshot_even_once_its_dataset_is_gone(user, base_model, dataset):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(
                owner=user,
                dataset=dataset,
                base_model=base_model,
                config=TrainConfig(),
                validation="split",
                validation_percent=25,
                validation_seed=3,
            ),
            name="first",
        )
    job_services.job_cancel(job=job, by=user)
    Dataset.objects.filter(id=dataset.id).delete()
    job.refresh_from_db()
    with pytest.raises(InputError) as refused:
        job_services.job_retry(job=job, by=user, config=TrainConfig(method="dpo"))
    assert refused.value.field == "method" and "plain examples" in refused.value.message
    with mock.patch("jobs.training.tasks.job_run.delay"):
        again = job_services.job_retry(job=job, by=user)
    assert (again.name, again.dataset, again.dataset_name) == ("first (retry)", None, job.dataset_name)
    assert again.validation == job.validation and again.memory_mb > 0
    assert (job_output_dir(again) / "data/train.jsonl").read_text() == (
        job_output_dir(job) / "data/train.jsonl"
    ).read_text()


def test_the_form_shows_every_setting_and_validation_problem_at_once(client_in, base_model, dataset):
    response = client_in.post(
        "/jobs/new/",
        form_values(base_model, dataset, validation="split", validation_percent=150, validation_seed=-1, rank=0),
    )
    errors = response.context["form"].errors
    assert response.status_code == 400 and {"rank", "validation_percent", "validation_seed"} <= set(errors)
    assert errors["validation_percent"] == ["Must be between 0 and 100"]
