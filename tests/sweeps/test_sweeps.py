"""Sweeps through their services and REST API, trials trained in-process on the tiny model (as tests/training
does): trials are ordinary jobs, the pruner stops some early, the best is promoted, and a restart loses nothing."""

from __future__ import annotations

from unittest import mock

import pytest

from jobs.sweeps import selectors, services, study, tasks
from jobs.sweeps.models import Sweep, SweepStatus, SweepTrial
from jobs.training import tasks as train_tasks
from jobs.training.models import FineTuneJob, JobStatus, MetricPoint

FIXED = {
    "target_preset": "all_linear",
    "batch_size": 2,
    "grad_accum": 1,
    "max_seq_length": 64,
    "warmup_ratio": 0,
    "eval_every": 1,
    "epochs": 2,
    "seed": 1,
}
SPACE = {"learning_rate": [1e-5, 3e-2, "log"], "rank": [2, 4, 8]}


def body(dataset, base_model, **over):
    return {
        "dataset": str(dataset.id),
        "base_model": str(base_model.id),
        "space": SPACE,
        "fixed": FIXED,
        "trials": 6,
        "parallelism": 2,
        "seed": 3,
        "validation_percent": 25,
        **over,
    }


@pytest.fixture(autouse=True)
def _no_wake_ups():
    with mock.patch("jobs.training.tasks.job_run.delay"):
        yield


def run_trials(django_capture_on_commit_callbacks) -> None:
    """The train worker, in-process: it claims queued trials until none is left; each job's end (on commit, so
    here once the worker idles) starts the sweep's next trials, which the worker then claims."""
    for _ in range(10):
        with django_capture_on_commit_callbacks(execute=True):
            train_tasks.job_run()
        if not FineTuneJob.objects.filter(status=JobStatus.QUEUED).exists():
            return


def test_a_sweep_prunes_poor_trials_and_promotes_the_best(
    api, user, base_model, dataset, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        created = api.post("/api/v1/sweeps/", body(dataset, base_model), format="json")
    assert created.status_code == 201, created.json()
    sweep = Sweep.objects.get(id=created.json()["id"])
    assert [t["status"] for t in created.json()["trials"]] == ["queued", "queued"]  # parallelism 2

    run_trials(django_capture_on_commit_callbacks)
    answer = api.get(f"/api/v1/sweeps/{sweep.id}/?curves=1").json()
    assert answer["status"] == "succeeded" and len(answer["trials"]) == 6
    statuses = [t["status"] for t in answer["trials"]]
    assert "pruned" in statuses and "succeeded" in statuses, statuses
    for trial in answer["trials"]:
        job = FineTuneJob.objects.get(id=trial["job"])
        assert job.config["learning_rate"] == trial["settings"]["learning_rate"]  # an ordinary job, its settings
        if trial["status"] == "pruned":
            assert job.step < job.total_steps and not job.stop_requested  # stopped early; the worker moved on
    finished = {t["number"]: t["metric"] for t in answer["trials"] if t["status"] == "succeeded"}
    best = min(finished, key=finished.get)
    assert answer["best_trial"] == best and answer["best_metric"] == finished[best]
    best_job = FineTuneJob.objects.get(id=answer["trials"][best]["job"])
    last_eval = MetricPoint.objects.filter(job=best_job, eval_loss__isnull=False).order_by("-step").first()
    assert finished[best] == pytest.approx(last_eval.eval_loss)
    assert answer["fine_tuned_model"].startswith("ft:tiny-llama:") and answer["result"] is None
    assert set(answer["curves"]) == {str(t["number"]) for t in answer["trials"]}

    promoted = api.post(f"/api/v1/sweeps/{sweep.id}/promote/")
    assert promoted.status_code == 200 and promoted.json()["result"] == answer["fine_tuned_model"]
    assert promoted.json()["result_job"] == str(best_job.id)
    chat = api.get("/v1/models").json()
    assert answer["fine_tuned_model"] in {m["id"] for m in chat["data"]}  # served by the OpenAI API


def test_a_restart_loses_no_trial_and_never_makes_one_twice(api, user, base_model, dataset):
    created = api.post("/api/v1/sweeps/", body(dataset, base_model, trials=3, pruner="none"), format="json")
    sweep = Sweep.objects.get(id=created.json()["id"])
    first = list(sweep.trial_rows.values_list("number", "job_id"))
    # A job ends while nothing listens (its signal lost with a killed process): the periodic sweep moves on.
    job = FineTuneJob.objects.get(id=first[0][1])
    FineTuneJob.objects.filter(id=job.id).update(status=JobStatus.FAILED, error="lost")
    tasks.sweeps_advance()
    tasks.sweeps_advance()  # twice, as two beats (or a beat and a signal) may: still one trial per number
    trials = list(sweep.trial_rows.order_by("number"))
    assert [t.number for t in trials] == [0, 1, 2] and trials[0].state == SweepTrial.State.FAILED
    assert trials[0].error == "lost" and FineTuneJob.objects.filter(sweep_trial__sweep=sweep).count() == 3
    assert services.sweep_advance(sweep_id=sweep.id) == []  # the budget is used: nothing more


def test_pause_resume_cancel(api, user, base_model, dataset):
    sweep_id = api.post("/api/v1/sweeps/", body(dataset, base_model), format="json").json()["id"]
    paused = api.post(f"/api/v1/sweeps/{sweep_id}/pause/").json()
    assert paused["status"] == "paused" and {t["status"] for t in paused["trials"]} == {"paused"}
    assert services.sweep_advance(sweep_id=sweep_id) == []  # a paused sweep starts nothing
    resumed = api.post(f"/api/v1/sweeps/{sweep_id}/resume/").json()
    assert resumed["status"] == "running" and {t["status"] for t in resumed["trials"]} == {"queued"}
    cancelled = api.post(f"/api/v1/sweeps/{sweep_id}/cancel/").json()
    assert cancelled["status"] == "cancelled" and {t["status"] for t in cancelled["trials"]} == {"cancelled"}
    again = api.post(f"/api/v1/sweeps/{sweep_id}/cancel/")
    assert again.status_code == 409
    assert api.post(f"/api/v1/sweeps/{sweep_id}/promote/").status_code == 409  # no finished trial


def test_errors_name_the_field_and_sweeps_are_private(api, api_bob, base_model, dataset):
    for over, field in [
        ({"space": {"rank": [0, 8]}}, "space.rank"),
        ({"space": {"nope": [1, 2]}}, "space.nope"),
        ({"fixed": {"learning_rate": -1}}, "fixed.learning_rate"),
        ({"metric": "bleu"}, "metric"),
        ({"trials": 0}, "trials"),
        ({"sampler": "grid", "space": {"learning_rate": [1e-4, 1e-3, "log"]}}, "space.learning_rate"),
        ({"pruner": "median"}, "pruner"),
    ]:
        answer = api.post("/api/v1/sweeps/", body(dataset, base_model, **over), format="json")
        assert answer.status_code == 400 and answer.json()["error"]["field"] == field, (over, answer.json())
    assert Sweep.objects.count() == 0 and FineTuneJob.objects.count() == 0
    sweep_id = api.post("/api/v1/sweeps/", body(dataset, base_model, trials=1), format="json").json()["id"]
    assert api_bob.get(f"/api/v1/sweeps/{sweep_id}/").status_code == 404
    assert api_bob.post(f"/api/v1/sweeps/{sweep_id}/cancel/").status_code == 404
    assert api_bob.get("/api/v1/sweeps/").json() == []
    assert api.get(f"/api/v1/sweeps/{sweep_id}/").status_code == 200
    # bob's dataset field: the same 400 as a missing one
    assert (
        api_bob.post("/api/v1/sweeps/", body(dataset, base_model), format="json").json()["error"]["field"] == "dataset"
    )


def test_the_status_pruned_is_terminal_everywhere(user, base_model, dataset):
    from jobs.openai_compat.fine_tuning import openai_status
    from jobs.training.models import TERMINAL_STATUSES

    job = FineTuneJob(status=JobStatus.PRUNED)
    assert JobStatus.PRUNED in TERMINAL_STATUSES and job.is_terminal and openai_status(job) == "cancelled"
    assert SweepStatus.RUNNING == "running"


def test_the_find_settings_form_and_the_sweep_page(client_in, user, base_model, dataset):
    assert 'id="find-settings"' in client_in.get("/jobs/new/").content.decode()
    form = {
        "dataset": str(dataset.id),
        "base_model": str(base_model.id),
        "metric": "eval_loss",
        "trials": 3,
        "parallelism": 1,
        "lr_low": 1e-4,
        "lr_high": 3e-3,
        "ranks": "0, 8, 16",
        "epochs_low": 1,
        "epochs_high": 2,
        "pruner": "successive_halving",
    }
    bad = client_in.post("/sweeps/new/", form)
    html = bad.content.decode()
    assert bad.status_code == 400 and "has-error" in html[html.index('id="field-ranks"') - 40 :][:60]
    assert "between 1 and 1024" in html and Sweep.objects.count() == 0
    made = client_in.post("/sweeps/new/", {**form, "ranks": "4, 8, 16"})
    sweep = Sweep.objects.get()
    assert made.status_code == 302 and made["Location"] == f"/sweeps/{sweep.id}/"
    page = client_in.get(made["Location"]).content.decode()
    assert 'id="leaderboard"' in page and 'data-trial="0"' in page and "sweep.js" in page
    assert sweep.trial_rows.get().params["rank"] in (4, 8, 16)
    assert client_in.post(f"/sweeps/{sweep.id}/pause/").status_code == 302
    sweep.refresh_from_db()
    assert sweep.status == SweepStatus.PAUSED
    assert str(sweep.id) in client_in.get("/sweeps/").content.decode()


def test_a_dataset_an_unfinished_sweep_uses_cannot_be_deleted(api, base_model, dataset):
    sweep_id = api.post("/api/v1/sweeps/", body(dataset, base_model, trials=1), format="json").json()["id"]
    api.post(f"/api/v1/sweeps/{sweep_id}/cancel/")
    Sweep.objects.filter(id=sweep_id).update(status=SweepStatus.RUNNING)  # as if it still ran
    refused = api.delete(f"/api/v1/datasets/{dataset.id}/")
    assert refused.status_code == 409 and "unfinished sweep" in refused.json()["error"]["message"]


def test_the_auto_preset_of_the_job_form_runs_a_small_sweep(client_in, user, base_model, dataset):
    page = client_in.get(f"/jobs/new/?dataset={dataset.id}").content.decode()
    assert 'id="submit-auto"' in page and 'formaction="/sweeps/auto/"' in page
    form = {"dataset": str(dataset.id), "base_model": str(base_model.id), "name": "", "method": "supervised"}
    made = client_in.post("/sweeps/auto/", {**form, "auto_trials": "2", "auto_minutes": ""})
    sweep = Sweep.objects.get()
    assert made.status_code == 302 and made["Location"] == f"/sweeps/{sweep.id}/"
    assert sweep.trials == 2 and set(sweep.space) == {"learning_rate", "rank", "epochs"} and sweep.minutes is None
    assert sweep.trial_rows.count() == 2 and sweep.name.startswith("Auto")
    services.sweep_cancel(sweep=sweep, by=user)
    by_time = client_in.post("/sweeps/auto/", {**form, "auto_trials": "", "auto_minutes": "5"})
    timed = Sweep.objects.exclude(id=sweep.id).get()
    assert by_time.status_code == 302 and timed.minutes == 5 and timed.trials == services.MAX_TRIALS_AUTO
    refused = client_in.post("/sweeps/auto/", {**form, "dataset": ""})
    assert refused.status_code == 302 and refused["Location"].startswith("/jobs/new/")
    assert Sweep.objects.count() == 2


def test_every_trial_evaluates_on_one_schedule_and_no_verdict_comes_before_the_second_evaluation(
    api, user, base_model, dataset
):
    """Trials of 1 and 4 epochs would evaluate every 1 and 4 steps on their own: the pruner would set one's loss
    after a step against another's after four. The sweep gives them all the first (shortest) trial's schedule."""
    fixed = {k: v for k, v in FIXED.items() if k not in ("eval_every", "epochs")}
    created = api.post(
        "/api/v1/sweeps/",
        body(dataset, base_model, fixed=fixed, space={**SPACE, "epochs": [1, 4]}, trials=3, parallelism=3),
        format="json",
    )
    assert created.status_code == 201, created.json()
    sweep = Sweep.objects.get(id=created.json()["id"])
    every = sweep.fixed["eval_every"]
    assert isinstance(every, int) and every >= 1
    jobs = FineTuneJob.objects.filter(sweep_trial__sweep=sweep)
    assert jobs.count() == 3 and {job.config["eval_every"] for job in jobs} == {every}
    assert len({job.config["epochs"] for job in jobs}) > 1  # different lengths, one schedule
    pruner = study.build_pruner(selectors.sweep_spec(sweep))
    assert pruner._min_resource == 2 * every
    # The user's own schedule stands.
    own = api.post("/api/v1/sweeps/", body(dataset, base_model, trials=1), format="json").json()
    assert Sweep.objects.get(id=own["id"]).fixed["eval_every"] == FIXED["eval_every"]
