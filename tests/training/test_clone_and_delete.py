"""New job from an old one, deleting jobs, and the readable default name."""

import re

import pytest

from jobs.arena.models import ChatSession
from jobs.training import services
from jobs.training.files import job_output_dir
from jobs.training.forms import CONFIG_FIELDS, clone_initial
from jobs.training.models import FineTuneJob, JobStatus
from jobs.training.plan import job_plan
from worker.config import PRESETS, TrainConfig, preset_of

pytestmark = pytest.mark.django_db


def make_job(user, base_model, dataset, name="", **config):
    return services.job_create(
        plan=job_plan(
            owner=user,
            dataset=dataset,
            base_model=base_model,
            config=TrainConfig.from_dict({"max_seq_length": 128, **config}),
            validation="split",
            validation_percent=25,
            validation_seed=3,
        ),
        name=name,
    )


def test_a_job_without_a_name_gets_its_dataset_preset_and_date(user, base_model, dataset):
    job = make_job(user, base_model, dataset, preset="quick")
    assert re.fullmatch(r"colours · quick · [A-Z][a-z]{2} \d{1,2} \d\d:\d\d", job.name), job.name
    assert " · custom · " in make_job(user, base_model, dataset, rank=4).name
    assert " · balanced · " in make_job(user, base_model, dataset, **PRESETS["balanced"]).name
    assert make_job(user, base_model, dataset, name="  mine ").name == "mine"


def test_preset_of_names_the_preset_a_config_still_is():
    for name, values in PRESETS.items():
        assert preset_of(TrainConfig(**values)) == name
    assert preset_of(TrainConfig(**{**PRESETS["quick"], "rank": 4})) == "custom"


def test_clone_fills_every_setting_from_the_job(user, base_model, dataset):
    config = {
        "rank": 4,
        "alpha": 8,
        "dropout": 0.1,
        "target_preset": "custom",
        "target_modules": ["q_proj", "v_proj"],
        "learning_rate": 0.002,
        "batch_size": 2,
        "grad_accum": 2,
        "warmup_ratio": 0.1,
        "lr_scheduler": "cosine",
        "seed": 7,
        "bias": "lora_only",
        "use_rslora": True,
        "max_grad_norm": 0.5,
        "eval_every": 3,
        "save_every": 5,
        "keep_best": False,
    }
    job = make_job(user, base_model, dataset, name="first", **config)
    initial = clone_initial(job)
    saved = TrainConfig.from_dict(job.config)
    for name in CONFIG_FIELDS:
        value = getattr(saved, name)
        assert initial[name] == (", ".join(value) if isinstance(value, tuple) else value), name
    assert initial["target_modules"] == "q_proj, v_proj" and initial["name"] == "first (copy)"
    assert (initial["dataset"], initial["base_model"]) == (dataset, base_model)
    assert (initial["validation"], initial["validation_percent"], initial["validation_seed"]) == ("split", 25, 3)


def test_the_new_job_page_from_a_foreign_job_is_an_empty_form(client_in, other_user, base_model, dataset, user):
    job = make_job(user, base_model, dataset, name="alice's")
    assert "alice&#x27;s (copy)" in client_in.get(f"/jobs/new/?from={job.id}").content.decode()
    from django.test import Client

    bob = Client()
    bob.force_login(other_user)
    page = bob.get(f"/jobs/new/?from={job.id}")
    assert page.status_code == 200 and "(copy)" not in page.content.decode()


def test_delete_removes_an_ended_job_its_files_and_chats(
    api, api_bob, user, base_model, dataset, django_capture_on_commit_callbacks
):
    job = make_job(user, base_model, dataset, name="old")
    out = job_output_dir(job)
    assert out.is_dir()
    assert api.delete(f"/api/v1/jobs/{job.id}/").status_code == 409, "a queued job is cancelled first"
    FineTuneJob.objects.filter(id=job.id).update(status=JobStatus.SUCCEEDED)
    chat = ChatSession.objects.create(owner=user, job=job)
    assert api_bob.delete(f"/api/v1/jobs/{job.id}/").status_code == 404
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/v1/jobs/{job.id}/").status_code == 204
    assert not FineTuneJob.objects.filter(id=job.id).exists() and not out.exists()
    assert not ChatSession.objects.filter(id=chat.id).exists()
    assert api.get(f"/api/v1/jobs/{job.id}/").status_code == 404


def test_a_job_another_live_job_starts_from_is_kept(api, user, base_model, dataset):
    first = make_job(user, base_model, dataset, name="sft")
    FineTuneJob.objects.filter(id=first.id).update(status=JobStatus.SUCCEEDED)
    FineTuneJob.objects.create(
        owner=user,
        dataset=dataset,
        base_model=base_model,
        name="dpo on top",
        config={**TrainConfig().to_dict(), "start_from": str(first.id)},
    )
    response = api.delete(f"/api/v1/jobs/{first.id}/")
    assert response.status_code == 409 and "dpo on top" in response.text
    assert FineTuneJob.objects.filter(id=first.id).exists()
