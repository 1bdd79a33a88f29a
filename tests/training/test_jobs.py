import io
import json
import tempfile
import zipfile
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.arena import tasks as chat_tasks
from jobs.datasets import services as dataset_services
from jobs.training import services as job_services
from jobs.training import tasks as train_tasks
from jobs.training.files import job_output_dir
from jobs.training.models import FineTuneJob, JobStatus, MetricPoint
from jobs.training.plan import job_plan
from worker.config import TrainConfig
from worker.gguf_export import quantization_available
from worker.tensorboard_events import scalar_tag

FAST = {
    "rank": 8,
    "alpha": 16,
    "dropout": 0.0,
    "target_preset": "all_linear",
    "epochs": 4,
    "learning_rate": 0.01,
    "batch_size": 4,
    "grad_accum": 1,
    "max_seq_length": 128,
    "warmup_ratio": 0,
    "lr_scheduler": "linear",
    "weight_decay": 0,
    "seed": 1,
    "bias": "none",
    "target_modules": "",
}
FORM_ONLY = {"validation": "none", "validation_percent": 10, "validation_seed": 42}


@pytest.fixture
def dataset(user, chat_file):
    return dataset_services.dataset_create(owner=user, upload=SimpleUploadedFile("chat.jsonl", chat_file.read_bytes()))


def form_data(base_model, dataset, **over):
    return {"name": "my job", "base_model": base_model.id, "dataset": dataset.id, **FAST, **FORM_ONLY, **over}


def submit(client, data, django_capture_on_commit_callbacks):
    with mock.patch("jobs.training.tasks.job_run.delay") as delay, django_capture_on_commit_callbacks(execute=True):
        response = client.post("/jobs/new/", data)
    return response, delay


def run_and_act_at_step(job, step: int, action, user) -> str:
    """Train `job` in-process and call `action` (cancel, pause) right after `step` is logged; the run's end."""
    real_log = train_tasks.DbReporter.log

    def log_then_act(self, logged_step, metrics):
        real_log(self, logged_step, metrics)
        if logged_step == step:
            action(job=FineTuneJob.objects.get(id=self.job_id), by=user)

    with mock.patch.object(train_tasks.DbReporter, "log", log_then_act):
        return train_tasks.job_run(str(job.id))


def test_form_errors_show_beside_the_field(client_in, base_model, dataset, django_capture_on_commit_callbacks):
    response, delay = submit(client_in, form_data(base_model, dataset, rank=0), django_capture_on_commit_callbacks)
    assert response.status_code == 400
    html = response.content.decode()
    field = html[html.index('id="field-rank"') :]
    field = field[: field.index("</div>\n</div>") if "</div>\n</div>" in field else 600]
    assert "has-error" in html[html.index('id="field-rank"') - 40 : html.index('id="field-rank"')]
    assert "Must be between 1 and 1024 (you gave 0)" in field
    assert FineTuneJob.objects.count() == 0 and not delay.called


def test_custom_targets_are_checked_against_the_model(
    client_in, base_model, dataset, django_capture_on_commit_callbacks
):
    response, _ = submit(
        client_in,
        form_data(base_model, dataset, target_preset="custom", target_modules="q_proj, wq"),
        django_capture_on_commit_callbacks,
    )
    assert response.status_code == 400
    assert "&#x27;wq&#x27; is not a Linear layer of this model; valid names:" in response.content.decode()


def test_form_defaults_are_rank16_alpha32_attention(client_in, base_model, dataset):
    html = client_in.get(f"/jobs/new/?dataset={dataset.id}").content.decode()
    assert 'name="rank" value="16"' in html and 'name="alpha" value="32' in html
    assert '<option value="attention" selected>' in html


def assert_tensorboard_events_match(zf: zipfile.ZipFile, metrics: list[dict]) -> None:
    """The zip's runs/ holds event files that TensorBoard's own reader reads back with every per-step metric of
    the job (loss, lr, eval loss, ...) at its step, and the settings as text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as folder:
        events = [n for n in zf.namelist() if n.startswith("runs/") and ".tfevents." in n]
        assert events, zf.namelist()
        zf.extractall(folder, members=events)
        reader = EventAccumulator(f"{folder}/runs", size_guidance={"scalars": 0, "tensors": 0})
        reader.Reload()
        assert "settings/text_summary" in reader.Tags()["tensors"]
        keys = {
            k
            for m in metrics
            for k, v in m.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        assert {"loss", "lr"} <= keys
        for key in keys:
            logged = {e.step: e.value for e in reader.Scalars(scalar_tag(key))}
            assert logged == pytest.approx({m["step"]: m[key] for m in metrics if key in m}, rel=1e-6), key


def test_job_lifecycle_trains_and_packages_the_adapter(
    client_in, user, base_model, dataset, django_capture_on_commit_callbacks
):
    response, delay = submit(client_in, form_data(base_model, dataset), django_capture_on_commit_callbacks)
    job = FineTuneJob.objects.get(owner=user)
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.id}/"
    assert job.status == JobStatus.QUEUED
    delay.assert_called_once_with()  # a wake-up: it names no job; the worker claims the fairest

    assert train_tasks.job_run(str(job.id)) == "succeeded"
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1 and job.step == job.total_steps == 8
    steps = list(MetricPoint.objects.filter(job=job).values_list("step", flat=True))
    assert steps == list(range(1, 9))
    assert train_tasks.job_run(str(job.id)) == "skipped", "a finished job is never claimed twice"

    response = client_in.get(f"/jobs/{job.id}/download/")
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith('attachment; filename="my-job-adapter.zip"')
    zf = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    names = set(zf.namelist())
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "training_config.json",
        "metrics.csv",
        "metrics.json",
        "dataset.sha256",
        "README.md",
    } <= names
    assert zf.read("dataset.sha256").decode().strip() == dataset.sha256
    assert json.loads(zf.read("training_config.json"))["rank"] == 8
    assert len(json.loads(zf.read("metrics.json"))) == 8
    assert_tensorboard_events_match(zf, json.loads(zf.read("metrics.json")))
    card = zf.read("README.md").decode()
    assert "tiny-llama" in card and "PeftModel.from_pretrained" in card and "Final training loss" in card
    assert json.loads(zf.read("adapter_config.json"))["r"] == 8
    # The card's serving recipes: vLLM, this product's API with the ft: id, llama.cpp and Ollama.
    assert "vllm serve tiny-llama --enable-lora --lora-modules my-job=./adapter" in card
    assert f'"model": "ft:tiny-llama:my-job:{job.short_id}"' in card and "$LORA_STUDIO_URL/v1/chat/completions" in card
    assert "llama-cli -m model.gguf --lora adapter.gguf" in card and "ollama create my-job -f Modelfile" in card
    # The job page's Export card: the GGUF buttons, the quantizations in words, and the same recipes.
    html = client_in.get(f"/jobs/{job.id}/").content.decode()
    assert (
        "Download for llama.cpp / Ollama (GGUF LoRA)" in html
        and "q8_0 — half the size, nearly the same answers" in html
    )
    assert "vllm serve tiny-llama" in html and "http://testserver/v1/chat/completions" in html
    assert ("q4-unavailable" in html) != quantization_available("q4_k_m")


def test_cancel_a_queued_job_and_a_running_one(client_in, user, base_model, dataset):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        queued = job_services.job_create(
            plan=job_plan(
                owner=user,
                dataset=dataset,
                base_model=base_model,
                config=TrainConfig(**{k: v for k, v in FAST.items() if k != "target_modules"}),
            )
        )
    assert client_in.post(f"/jobs/{queued.id}/cancel/").status_code == 302
    queued.refresh_from_db()
    assert queued.status == JobStatus.CANCELLED
    assert train_tasks.job_run(str(queued.id)) == "skipped"

    with mock.patch("jobs.training.tasks.job_run.delay"):
        running = job_services.job_create(
            plan=job_plan(
                owner=user,
                dataset=dataset,
                base_model=base_model,
                config=TrainConfig(**{k: v for k, v in FAST.items() if k != "target_modules"}),
            )
        )
    assert run_and_act_at_step(running, 2, job_services.job_cancel, user) == "cancelled"
    running.refresh_from_db()
    assert running.status == JobStatus.CANCELLED and running.step == 2
    assert MetricPoint.objects.filter(job=running).count() == 2
    with pytest.raises(job_services.JobStateError):
        job_services.job_cancel(job=running, by=user)


def test_other_users_get_404(client, other_user, user, base_model, dataset):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig())
        )
    client.force_login(other_user)
    for url in (f"/jobs/{job.id}/", f"/jobs/{job.id}/download/", f"/jobs/{job.id}/compare/", f"/jobs/{job.id}/events/"):
        assert client.get(url).status_code == 404, url
    assert client.post(f"/jobs/{job.id}/cancel/").status_code == 404
    html = client.get("/jobs/new/").content.decode()
    assert str(dataset.id) not in html


def test_engine_failure_is_a_readable_error(user, base_model, dataset, settings):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig())
        )
    (job_output_dir(job) / "data/train.jsonl").write_text("not json\n")
    assert train_tasks.job_run(str(job.id)) == "failed"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error.startswith("train.jsonl: line 1: is not valid JSON"), job.error


def test_compare_ask_validates_and_queues_both_sides(
    page_api, user, base_model, dataset, django_capture_on_commit_callbacks
):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(
                owner=user,
                dataset=dataset,
                base_model=base_model,
                config=TrainConfig(**{**{k: v for k, v in FAST.items() if k != "target_modules"}, "epochs": 1}),
            )
        )
    url = f"/api/v1/jobs/{job.id}/chat/"  # as the compare page's script calls it
    response = page_api.post(url, {"prompt": "hi"}, format="json")
    assert response.status_code == 409 and "has no adapter yet" in response.json()["error"]["message"]
    train_tasks.job_run(str(job.id))
    response = page_api.post(url, {"prompt": "hi", "max_new_tokens": 0}, format="json")
    assert response.status_code == 400 and "max_new_tokens" in response.json()
    response = page_api.post(url, {"prompt": "  "}, format="json")
    assert response.status_code == 400 and "prompt" in response.json()
    with mock.patch("jobs.arena.tasks.chat_round.delay") as delay, django_capture_on_commit_callbacks(execute=True):
        response = page_api.post(url, {"prompt": "colour 1", "max_new_tokens": 8}, format="json")
    assert response.status_code == 201
    answers = {a["side"]: a["id"] for a in response.json()["answers"]}
    # One infer task for the round: both sides are generated in one batched call.
    assert set(answers) == {"base", "adapter"} and delay.call_count == 1
    assert sorted(delay.call_args.args[0]) == sorted(answers.values())
    # Run the infer task in-process: both sides answer, the adapter through PEFT.
    assert chat_tasks.chat_round(delay.call_args.args[0]) == ["done", "done"]
    assert chat_tasks.chat_round(delay.call_args.args[0]) == ["skipped", "skipped"], "a redelivered task does nothing"
    from jobs.arena.models import ChatAnswer

    done = {a.side: a for a in ChatAnswer.objects.all()}
    assert done["base"].state == done["adapter"].state == "done"
    assert done["adapter"].text != done["base"].text


def test_pause_resume_and_retry(client_in, user, base_model, dataset, django_capture_on_commit_callbacks):
    cfg = TrainConfig(**{**{k: v for k, v in FAST.items() if k != "target_modules"}, "save_every": 100})
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=cfg))
    assert run_and_act_at_step(job, 3, job_services.job_pause, user) == "paused"
    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED and job.step == 3
    assert (job_output_dir(job) / "checkpoints/step-000003/adapter_model.safetensors").is_file()
    with pytest.raises(job_services.JobStateError, match="cannot be paused"):
        job_services.job_pause(job=job, by=user)

    with mock.patch("jobs.training.tasks.job_run.delay") as delay, django_capture_on_commit_callbacks(execute=True):
        assert client_in.post(f"/jobs/{job.id}/resume/").status_code == 302
    delay.assert_called_once_with()  # a wake-up: it names no job; the worker claims the fairest
    assert train_tasks.job_run(str(job.id)) == "succeeded"
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1 and job.crashes == []  # a pause is no crash
    assert list(MetricPoint.objects.filter(job=job).values_list("step", flat=True)) == list(range(1, 9))
    assert job.events.filter(kind="resume", message__contains="step 3").exists()

    with mock.patch("jobs.training.tasks.job_run.delay"):
        other = job_services.job_create(plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=cfg))
    job_services.job_cancel(job=other, by=user)
    with mock.patch("jobs.training.tasks.job_run.delay") as delay, django_capture_on_commit_callbacks(execute=True):
        response = client_in.post(f"/jobs/{other.id}/retry/")
    retried = FineTuneJob.objects.exclude(id__in=[job.id, other.id]).get()
    assert response["Location"] == f"/jobs/{retried.id}/"
    assert retried.config == other.config and retried.validation == other.validation
    assert (job_output_dir(retried) / "data/train.jsonl").read_text() == (
        job_output_dir(other) / "data/train.jsonl"
    ).read_text()
    delay.assert_called_once_with()  # a wake-up names no job
    assert client_in.post(f"/jobs/{job.id}/retry/", follow=True).content.decode().count("cannot be retried") == 1


def test_job_actions_over_the_apis(user, base_model, dataset):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(user)
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig())
        )
        assert api.post(f"/api/v1/jobs/{job.id}/pause/").json()["status"] == "paused"
        assert api.post(f"/api/v1/jobs/{job.id}/pause/").status_code == 409
        assert api.post(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/resume").json()["status"] == "queued"
        assert api.post(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/pause").json()["status"] == "paused"
        assert api.post(f"/api/v1/jobs/{job.id}/resume/").json()["status"] == "queued"
        assert api.post(f"/api/v1/jobs/{job.id}/retry/").status_code == 409
        api.post(f"/api/v1/jobs/{job.id}/cancel/")
        response = api.post(
            f"/api/v1/jobs/{job.id}/retry/", {"config": {"batch_size": 2, "grad_accum": 4}}, format="json"
        )
        assert response.status_code == 201
        assert response.json()["config"]["batch_size"] == 2 and response.json()["config"]["grad_accum"] == 4
        response = api.post(f"/api/v1/jobs/{job.id}/retry/", {"config": {"rank": -1}}, format="json")
        assert response.status_code == 400 and response.json()["error"]["field"] == "rank"


def test_out_of_memory_fails_with_advice_and_a_one_click_retry(
    client_in, user, base_model, dataset, django_capture_on_commit_callbacks
):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(batch_size=8))
        )
    with mock.patch("worker.engine.summed_token_loss", side_effect=MemoryError):
        assert train_tasks.job_run(str(job.id)) == "failed"
    job.refresh_from_db()
    assert job.error.startswith("Out of memory. Try, in this order: a smaller batch size")
    assert job.error_code == "out_of_memory"  # the page recognises it by this code, not by the message
    html = client_in.get(f"/jobs/{job.id}/").content.decode()
    assert 'id="retry-suggested"' in html and "batch_size = 4, grad_accum = 2, gradient_checkpointing = True" in html
    with mock.patch("jobs.training.tasks.job_run.delay"), django_capture_on_commit_callbacks(execute=True):
        client_in.post(f"/jobs/{job.id}/retry/", {"suggested": "1"})
    retried = FineTuneJob.objects.exclude(id=job.id).get()
    assert (retried.config["batch_size"], retried.config["grad_accum"], retried.config["gradient_checkpointing"]) == (
        4,
        2,
        True,
    )


def test_oom_suggestion_keeps_the_effective_batch():
    from worker.memory_advice import oom_suggestion

    assert oom_suggestion(TrainConfig(batch_size=8, grad_accum=2)) == {
        "batch_size": 4,
        "grad_accum": 4,
        "gradient_checkpointing": True,
    }
    assert oom_suggestion(TrainConfig(batch_size=1, max_seq_length=1024, gradient_checkpointing=True)) == {
        "max_seq_length": 512
    }
    assert oom_suggestion(TrainConfig(batch_size=1, max_seq_length=128, gradient_checkpointing=True)) == {"qlora": True}


def test_evaluation_shows_on_the_job_page_and_in_the_zip(client_in, user, base_model, dataset):
    cfg = TrainConfig(**{**{k: v for k, v in FAST.items() if k != "target_modules"}, "epochs": 6})
    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = job_services.job_create(
            plan=job_plan(
                owner=user,
                dataset=dataset,
                base_model=base_model,
                config=cfg,
                validation="split",
                validation_percent=25,
                validation_seed=3,
            )
        )
    assert train_tasks.job_run(str(job.id)) == "succeeded"
    assert MetricPoint.objects.filter(job=job, eval_loss__isnull=False).exists()
    html = client_in.get(f"/jobs/{job.id}/").content.decode()
    assert 'id="evaluation"' in html and "Held-out prompts (2)" in html
    response = client_in.get(f"/jobs/{job.id}/download/")
    zf = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    evaluation = json.loads(zf.read("evaluation.json"))
    metrics = json.loads(zf.read("metrics.json"))
    assert_tensorboard_events_match(zf, metrics)
    assert any(m.get("eval_loss") is not None for m in metrics)  # so eval/loss was read back too
    assert len(evaluation["rows"]) == 2 and set(evaluation["loss"]) == {"base", "adapter"}
    card = zf.read("README.md").decode()
    assert "## Evaluation on the validation split" in card and "| validation loss |" in card


def test_compare_runs_overlays_curves_of_your_own_jobs(client_in, user, other_user, base_model, dataset):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        a = job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(rank=8)), name="r8"
        )
        b = job_services.job_create(
            plan=job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(rank=16)), name="r16"
        )
    MetricPoint.objects.create(job=a, step=1, train_loss=2.0)
    MetricPoint.objects.create(job=a, step=2, train_loss=1.5, eval_loss=1.7)
    MetricPoint.objects.create(job=b, step=1, train_loss=2.2)
    response = client_in.get(f"/jobs/compare/?job={a.id}&job={b.id}&job=not-a-uuid")
    series = response.context["series"]
    assert {s["label"]: s["points"] for s in series} == {"r8": [[1, 2.0, None], [2, 1.5, 1.7]], "r16": [[1, 2.2, None]]}
    rows = {row.name: row for row in response.context["rows"]}
    assert sorted(c.text for c in rows["rank"].cells) == ["16", "8"] and rows["rank"].differs
    assert not rows["learning_rate"].differs and len(rows) >= 30, "every setting, the differing ones marked"
    client_in.force_login(other_user)
    assert client_in.get(f"/jobs/compare/?job={a.id}").context["jobs"] == []


def test_estimate_before_submit_and_refusal_when_it_cannot_fit(client_in, user, base_model, dataset, settings):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from worker.modeling import get_peft_config

    data = form_data(base_model, dataset)
    response = client_in.post("/jobs/estimate/", data)
    assert response.status_code == 200
    est = response.json()["estimate"]
    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_model.path),
        get_peft_config(TrainConfig(rank=8, alpha=16, target_preset="all_linear"), base_model.linear_modules),
    )
    assert est["trainable_params"] == peft.get_nb_trainable_parameters()[0]
    assert est["fits"] and est["steps"] == 8

    settings.TRAIN_MEMORY_LIMIT_MB = 0.01
    response = client_in.post("/jobs/new/", data)
    assert response.status_code == 400 and "This job would not fit in memory" in response.content.decode()
    assert "Try" in response.content.decode()  # the advice as its own sentence, not run into the figures
    assert FineTuneJob.objects.count() == 0
    tight = client_in.post("/jobs/estimate/", data).json()["estimate"]
    assert not tight["fits"] and [a["text"] for a in tight["advice_changes"]] == tight["advice"]
    assert all(isinstance(a["changes"], dict) and a["changes"] for a in tight["advice_changes"])
    assert "warnings" in tight and tight["seconds_source"] in ("measured", "calibrated", None)
    bad = client_in.post("/jobs/estimate/", {**data, "rank": 0})
    assert bad.status_code == 400 and "rank" in bad.json()["errors"]
