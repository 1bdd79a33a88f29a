"""Fit by memory: worker announcements, claims that only take jobs that fit, wake-ups that carry no job, why a
queued job waits, and the refuse/wait setting through the form, REST and the OpenAI API. Real workers on
declared capacities: tests/integration/test_routing.py."""

import dataclasses
import json
from unittest import mock

import pytest
from django.core.exceptions import ImproperlyConfigured

from jobs.training import selectors, workers
from jobs.training import services as job_services
from jobs.training import tasks as train_tasks
from jobs.training.claims import Claim, fair_order
from jobs.training.models import FineTuneJob, JobEvent, JobStatus
from jobs.training.plan import job_plan
from jobs.training.routing import Capacity, fits, waiting_for
from worker.config import TrainConfig

GB = 1024
TINY = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_preset": "attention", "batch_size": 2, "max_seq_length": 64}


def announced(*workers_: tuple[str, float, str | None]):
    """Stand-ins for live workers' announcements: (name, memory MB, current job id)."""
    return [
        {
            "name": name,
            "host": "h",
            "pid": i,
            "device": "cpu",
            "count": 1,
            "memory_mb": memory,
            "job": job,
            "started": 1.0,
            "seen": 2.0,
        }
        for i, (name, memory, job) in enumerate(workers_)
    ]


def create_job(user, base_model, dataset, config, *, memory_mb, name=""):
    """A job planned and created as every caller does, with its memory need set to `memory_mb` (its class)."""
    plan = job_plan(owner=user, dataset=dataset, base_model=base_model, config=config)
    plan = dataclasses.replace(plan, estimate=dataclasses.replace(plan.estimate, memory_mb=memory_mb))
    return job_services.job_create(plan=plan, name=name)


def fleet(*workers_):
    return mock.patch("jobs.training.workers.live_workers", return_value=announced(*workers_))


# --- fit ------------------------------------------------------------------------------------------


def test_fit_counts_memory_per_device_and_devices():
    gpu = Capacity(device="cuda", count=2, memory_mb=24 * GB)
    assert fits(gpu, need_mb=20 * GB, devices=2) and not fits(gpu, need_mb=20 * GB, devices=4)
    assert not fits(gpu, need_mb=25 * GB)
    assert waiting_for(need_mb=20 * GB, devices=1, capacities=[]) == ""  # nobody announced: just queued
    assert waiting_for(need_mb=20 * GB, devices=1, capacities=[gpu]) == ""
    small = Capacity(device="cuda", count=1, memory_mb=16 * GB)
    assert (
        waiting_for(need_mb=30_000, devices=1, capacities=[gpu, small, small])
        == "waits for a worker with 29.3 GB; the live ones have 24 GB, 16 GB"
    )
    assert (
        waiting_for(need_mb=20 * GB, devices=4, capacities=[gpu])
        == "waits for a worker with 4 devices of 20 GB; the live ones have 2 × 24 GB"
    )


# --- what a worker announces ------------------------------------------------------------------------


def test_declared_capacity_overrides_detection_and_is_checked(settings):
    settings.WORKER_CAPACITY = '{"device": "cuda", "count": 2, "memory_mb": 81920}'
    assert workers.own_capacity() == Capacity(device="cuda", count=2, memory_mb=81920.0)
    settings.WORKER_CAPACITY = ""
    settings.TRAIN_MEMORY_LIMIT_MB = 3000
    assert workers.own_capacity().memory_mb == 3000.0
    for raw, field in [
        ("{", "JSON"),
        ('{"device": "tpu", "memory_mb": 1}', "device"),
        ('{"count": 0, "memory_mb": 1}', "count"),
        ('{"memory_mb": -5}', "memory_mb"),
        ('{"memory_mb": 1, "colour": 1}', "only"),
    ]:
        with pytest.raises(ImproperlyConfigured, match=field):
            workers.parse_capacity(raw)


@pytest.fixture
def as_worker(real_redis, settings):
    """This process announcing itself as a train worker (as the Celery signals set it up)."""
    settings.WORKER_CAPACITY = '{"device": "cpu", "count": 1, "memory_mb": 4000}'
    settings.WORKER_HEARTBEAT_SECONDS = 2
    with mock.patch.dict(workers._me, name="train-test@host", job=None, started=1.0):
        workers._beating.set()
        yield real_redis
        workers.withdraw()


def test_a_worker_announces_itself_with_a_ttl_and_its_job(as_worker):
    workers.announce()
    [me] = workers.live_workers()
    assert (me["name"], me["device"], me["count"], me["memory_mb"], me["job"]) == (
        "train-test@host",
        "cpu",
        1,
        4000.0,
        None,
    )
    key = next(as_worker.scan_iter(match="train-worker:*"))
    assert 0 < as_worker.ttl(key) <= 6  # three heartbeats: a killed worker is gone within them
    workers.set_current_job("0" * 32)
    assert workers.live_workers()[0]["job"] == "0" * 32
    workers.withdraw()
    assert workers.live_workers() == []
    workers.set_current_job(None)  # a job ending after a clean shutdown does not bring it back
    assert workers.live_workers() == []


# --- claims take only jobs that fit ------------------------------------------------------------------


@pytest.fixture
def small_and_big(user, base_model, dataset):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        small = create_job(user, base_model, dataset, TrainConfig(**TINY), memory_mb=1000)
        big = create_job(user, base_model, dataset, TrainConfig(**TINY), memory_mb=5000)
    return small, big


def test_a_worker_claims_only_jobs_that_fit_it(small_and_big):
    small, big = small_and_big
    FineTuneJob.objects.filter(id=big.id).update(created=small.created.replace(year=2000))  # big is older: first
    assert fair_order() == [big.id, small.id]
    assert fair_order(capacity=Capacity(device="cpu", count=1, memory_mb=2000)) == [small.id]
    FineTuneJob.objects.filter(id=small.id).update(config={**small.config, "devices": 2})
    # A GPU worker has as many devices as GPUs; on a CPU worker, ranks are processes sharing its cores.
    assert fair_order(capacity=Capacity(device="cuda", count=1, memory_mb=8000)) == [big.id]
    assert fair_order(capacity=Capacity(device="cpu", count=1, memory_mb=8000)) == [big.id, small.id]
    claim = Claim.take_fairest(preferred_job_id=big.id, capacity=Capacity(device="cuda", count=2, memory_mb=2000))
    assert claim.job_id == small.id


def test_a_wake_up_starts_nothing_on_a_worker_too_small_and_the_job_runs_where_it_fits(small_and_big, settings):
    """Rewritten from "a message for a job too big goes back to the sweep" (Redis dispatch markers, removed): what
    it guarded is that a worker never starts a job it cannot fit and that the job is not stranded."""
    small, big = small_and_big
    FineTuneJob.objects.filter(id=small.id).update(status=JobStatus.CANCELLED)
    settings.WORKER_CAPACITY = '{"device": "cpu", "count": 1, "memory_mb": 2000}'
    assert train_tasks.job_run() == "skipped"
    big.refresh_from_db()
    assert big.status == JobStatus.QUEUED and big.attempts == 0
    settings.WORKER_CAPACITY = '{"device": "cpu", "count": 1, "memory_mb": 8000}'
    with mock.patch("jobs.training.tasks._run_claimed", return_value="succeeded") as run:
        assert train_tasks.job_run() == "succeeded"
    assert [c.args[0].job_id for c in run.call_args_list] == [big.id]


def test_a_free_worker_takes_the_fairest_job_that_fits_then_the_next_until_none_fits(small_and_big, settings):
    """Rewritten from "a turn used for another job sends the message's job again" (hand_on, removed): a wake-up
    names no job; the worker claims every job that fits it, fairest first, and leaves the rest queued."""
    small, big = small_and_big
    third = FineTuneJob.objects.create(
        owner=small.owner, base_model=small.base_model, config=small.config, status=JobStatus.QUEUED, memory_mb=1500
    )
    settings.WORKER_CAPACITY = '{"device": "cpu", "count": 1, "memory_mb": 2000}'
    started = []

    def run(claim):
        started.append(claim.job_id)
        FineTuneJob.objects.filter(id=claim.job_id).update(status=JobStatus.SUCCEEDED)
        return "succeeded"

    with mock.patch("jobs.training.tasks._run_claimed", side_effect=run):
        assert train_tasks.job_run(str(third.id)) == "succeeded"
    assert started == [small.id, third.id]  # oldest first: the id given only breaks a tie
    big.refresh_from_db()
    assert big.status == JobStatus.QUEUED


def test_waking_the_workers_sends_one_wake_up_per_live_worker_on_commit(
    db, real_redis, django_capture_on_commit_callbacks
):
    with mock.patch("jobs.training.tasks.job_run.delay") as delay:
        with fleet(("a@h", 4000, None), ("b@h", 4000, "x"), ("c@h", 4000, None)):
            with django_capture_on_commit_callbacks(execute=True):
                workers.wake_train_workers()
                assert delay.call_count == 0  # nothing before the commit
            assert delay.call_count == 3 and delay.call_args.args == ()  # a wake-up names no job
            real_redis.rpush("train", "w1", "w2")  # two still waiting: every idle worker has one already
            with django_capture_on_commit_callbacks(execute=True):
                workers.wake_train_workers()
            assert delay.call_count == 4
        real_redis.delete("train")
        with django_capture_on_commit_callbacks(execute=True):  # none announced: one, for whoever starts
            workers.wake_train_workers()
        assert delay.call_count == 5


# --- submit: refuse or wait, on the form, REST and the OpenAI API ------------------------------------------


def rest_submit(api, base_model, dataset):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        return api.post(
            "/api/v1/jobs/",
            {"dataset": str(dataset.id), "base_model": str(base_model.id), "config": TINY, "validation": "none"},
            format="json",
        )


def openai_submit(api, dataset):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        return api.post(
            "/v1/fine_tuning/jobs",
            {"model": "tiny-llama", "training_file": f"file-{dataset.id.hex}", "lora": {"rank": 4, "alpha": 8}},
            format="json",
        )


def form_submit(client, base_model, dataset):
    data = {
        "name": "j",
        "base_model": base_model.id,
        "dataset": dataset.id,
        **TINY,
        "epochs": 1,
        "learning_rate": 0.01,
        "grad_accum": 1,
        "warmup_ratio": 0,
        "lr_scheduler": "linear",
        "weight_decay": 0,
        "seed": 1,
        "bias": "none",
        "validation": "none",
    }
    with mock.patch("jobs.training.tasks.job_run.delay"):
        return client.post("/jobs/new/", data)


def test_refused_everywhere_with_the_figures_when_no_live_worker_fits(settings, api, client_in, base_model, dataset):
    settings.ROUTING_NO_FIT = "refuse"
    with fleet(("small@a", 100, None), ("smaller@b", 50, None)):
        rest = rest_submit(api, base_model, dataset)
        assert rest.status_code == 400
        error = rest.json()["error"]
        assert error["field"] == "config"
        assert "biggest live train worker (small@a) has 100 MB" in error["message"]
        assert "ROUTING_NO_FIT=refuse" in error["message"] and "MB of memory per device" in error["message"]
        openai = openai_submit(api, dataset)
        assert openai.status_code == 400 and openai.json()["error"]["param"] == "hyperparameters"
        assert "small@a" in openai.json()["error"]["message"]
        form = form_submit(client_in, base_model, dataset)
        assert form.status_code == 400 and "biggest live train worker (small@a) has 100 MB" in form.content.decode()
    assert not FineTuneJob.objects.exists()


def test_accepted_and_waiting_visibly_when_set_to_wait(settings, api, client_in, base_model, dataset):
    settings.ROUTING_NO_FIT = "wait"
    with fleet(("small@a", 100, None)):
        rest = rest_submit(api, base_model, dataset)
        assert rest.status_code == 201, rest.content
        job = FineTuneJob.objects.get(id=rest.json()["id"])
        assert job.memory_mb > 100 and job.status == JobStatus.QUEUED
        need = rest.json()["waiting_for"]
        assert need.startswith("waits for a worker with 0.") and need.endswith("; the live ones have 0.1 GB"), need
        assert rest.json()["waiting_reason"] == need  # the one sentence: here, the memory it waits for
        detail = api.get(f"/api/v1/jobs/{job.id}/").json()
        assert detail["waiting_for"] == detail["waiting_reason"] == need
        page = client_in.get(f"/jobs/{job.id}/").content.decode()
        assert 'id="job-waiting"' in page and need in page
        assert JobEvent.objects.get(job=job, kind="waiting").message.startswith(need)
        openai = openai_submit(api, dataset)
        assert openai.status_code == 200, openai.content
        events = api.get(f"/v1/fine_tuning/jobs/{openai.json()['id']}/events").json()["data"]
        assert any(e["message"].startswith("waits for a worker with ") for e in events)
        assert form_submit(client_in, base_model, dataset).status_code == 302
    assert FineTuneJob.objects.count() == 3
    with fleet(("big@c", 100_000, None)):  # a big enough worker arrives: nothing to wait for but its turn
        detail = api.get(f"/api/v1/jobs/{job.id}/").json()
        assert detail["waiting_for"] == "" and detail["waiting_reason"] == "1st in the fair queue"


def test_a_job_that_fits_a_live_worker_is_just_queued(settings, api, base_model, dataset):
    settings.ROUTING_NO_FIT = "refuse"
    with fleet(("small@a", 100, None), ("big@c", 100_000, None)):
        rest = rest_submit(api, base_model, dataset)
    assert rest.status_code == 201 and rest.json()["waiting_for"] == ""
    assert not JobEvent.objects.filter(kind="waiting").exists()


def test_the_estimate_uses_the_workers_device_and_memory(user, base_model, dataset, settings):
    settings.TRAIN_DEVICE = "auto"
    gpus = [("gpu@a", Capacity(device="cuda", count=1, memory_mb=24 * GB))]
    est = job_plan(
        owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(**TINY), fleet=gpus, refuse=False
    ).estimate
    assert est.memory_limit_mb == 24 * GB and est.breakdown["overhead"] == 500  # CUDA's context, bf16
    cpus = [("cpu@b", Capacity(device="cpu", count=1, memory_mb=4000))]
    est = job_plan(
        owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(**TINY), fleet=gpus + cpus, refuse=False
    ).estimate
    assert (
        est.memory_limit_mb == 24 * GB and est.breakdown["overhead"] == 400
    )  # the CPU runtime, fp32: nothing converted


# --- the Workers page and API ----------------------------------------------------------------------------


def test_workers_api_shows_devices_memory_jobs_and_why_your_jobs_wait(
    api, api_bob, user, client_in, base_model, dataset, django_user_model
):
    from tests.factories import bearer_client

    staff = django_user_model.objects.create_user("root", is_staff=True)
    with mock.patch("jobs.training.tasks.job_run.delay"):
        mine = create_job(user, base_model, dataset, TrainConfig(**TINY), memory_mb=20_000, name="mine")
        after = create_job(user, base_model, dataset, TrainConfig(**TINY), memory_mb=1000, name="after")
    FineTuneJob.objects.filter(id=mine.id).update(status=JobStatus.RUNNING)
    with fleet(("big@a", 30_000, str(mine.id)), ("small@b", 4000, None)):
        data = api.get("/api/v1/workers/").json()
        bobs = api_bob.get("/api/v1/workers/").json()
        staffs = bearer_client(staff).get("/api/v1/workers/").json()
        page = client_in.get("/workers/").content.decode()
        client_in.force_login(staff)
        staff_page = client_in.get("/workers/").content.decode()
    big, small = data["workers"]
    # A user: the capacities, busy or not, and their own job; no worker names, hosts or times.
    assert big == {
        "device": "cpu",
        "count": 1,
        "memory_mb": 30_000,
        "busy": True,
        "job": {"id": str(mine.id), "name": "mine"},
        "started": None,
        "seen": None,
    }
    assert not small["busy"] and small["job"] is None and small["memory_mb"] == 4000
    assert bobs["workers"][0]["busy"] and bobs["workers"][0]["job"] is None  # someone else's job: only "busy"
    reason = "waits for one of your running jobs to end (you may train 1 at a time)"
    assert data["waiting"] == [{"id": str(after.id), "name": "after", "reason": reason}]
    assert bobs["waiting"] == []
    assert "queued_jobs" not in data and "queued_jobs" not in bobs  # the queue of all users is staff's
    assert data["no_fit"] == "wait"
    for shown in (json.dumps(data), json.dumps(bobs), page):
        assert "big@a" not in shown and "small@b" not in shown
    assert ">mine</a>" in page and 'href="/workers/"' in page and "queued (all users)" not in page
    assert ">after</a>" in page and reason in page
    # Staff: everything.
    big_s = staffs["workers"][0]
    assert (big_s["name"], big_s["host"], big_s["started"], big_s["seen"]) == ("big@a", "h", 1.0, 2.0)
    assert staffs["queued_jobs"] == 1
    assert "big@a" in staff_page and "small@b" in staff_page and "1 job queued (all users)" in staff_page
    from rest_framework.test import APIClient

    assert APIClient().get("/api/v1/workers/").status_code in (401, 403)


# --- why a queued job waits: one sentence from one place ----------------------------------------------------


def test_why_a_queued_job_waits(user, other_user, base_model, dataset):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        first, second = (create_job(user, base_model, dataset, TrainConfig(**TINY), memory_mb=3000) for _ in range(2))
    bobs = FineTuneJob.objects.create(owner=other_user, base_model=base_model, config=first.config, memory_mb=3000)

    def reason(job, *workers_):
        job.refresh_from_db()
        return selectors.job_wait_reason(job=job, live=announced(*workers_))

    assert reason(first) == "waits for a train worker: none is running; it starts when one does"
    assert reason(first, ("s@a", 2 * GB, None)) == "waits for a worker with 3 GB; the live ones have 2 GB"
    assert reason(first, ("b@a", 4 * GB, None)) == "1st in the fair queue"
    assert reason(second, ("b@a", 4 * GB, None)) == "2nd in the fair queue"  # nobody has run: the oldest first
    assert reason(bobs, ("b@a", 4 * GB, None)) == "3rd in the fair queue"
    assert reason(first, ("b@a", 4 * GB, "x"), ("s@a", 2 * GB, None)) == (
        "1st in the fair queue; every train worker that fits it is busy"
    )
    Claim.take(first.id)
    assert reason(second, ("b@a", 4 * GB, str(first.id))) == (
        "waits for one of your running jobs to end (you may train 1 at a time)"
    )
    assert reason(bobs, ("b@a", 4 * GB, str(first.id))) == (
        "1st in the fair queue; every train worker that fits it is busy"
    )
    assert reason(first, ("b@a", 4 * GB, None)) == ""  # running: nothing to wait for


def test_the_routing_settings_are_checked(monkeypatch):
    from webapp.env import env_choice

    monkeypatch.setenv("ROUTING_NO_FIT", "Refuse")
    assert env_choice("ROUTING_NO_FIT", "wait", ("wait", "refuse")) == "refuse"
    monkeypatch.setenv("ROUTING_NO_FIT", "drop")
    with pytest.raises(ImproperlyConfigured, match="ROUTING_NO_FIT must be one of wait, refuse"):
        env_choice("ROUTING_NO_FIT", "wait", ("wait", "refuse"))
