"""Routing by fit: memory classes and their queues, worker announcements, claims that only take jobs that
fit, and the refuse/wait setting through the form, REST and the OpenAI API. Real workers on declared
capacities: tests/integration/test_routing.py."""
import dataclasses
from unittest import mock

import pytest
from django.core.exceptions import ImproperlyConfigured

from jobs.training import services as job_services
from jobs.training import tasks as train_tasks
from jobs.training import workers
from jobs.training.claims import Claim, fair_order
from jobs.training.dispatch import hand_on, is_dispatched
from jobs.training.models import FineTuneJob, JobEvent, JobStatus
from jobs.training.plan import job_plan
from jobs.training.routing import Capacity, fits, queue_for_need, queues_for_memory, route_train_job, waiting_for
from worker.config import TrainConfig

GB = 1024
TINY = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_preset": "attention", "batch_size": 2, "max_seq_length": 64}


@pytest.fixture(autouse=True)
def _classes(settings):
    settings.ROUTING_MEMORY_CLASSES_GB = [8, 16, 24]


def announced(*workers_: tuple[str, float, str | None]):
    """Stand-ins for live workers' announcements: (name, memory MB, current job id)."""
    return [{"name": name, "host": "h", "pid": i, "device": "cpu", "count": 1, "memory_mb": memory,
             "queues": queues_for_memory(memory), "job": job, "started": 1.0, "seen": 2.0}
            for i, (name, memory, job) in enumerate(workers_)]


def create_job(user, base_model, dataset, config, *, memory_mb, name=""):
    """A job planned and created as every caller does, with its memory need set to `memory_mb` (its class)."""
    plan = job_plan(owner=user, dataset=dataset, base_model=base_model, config=config)
    plan = dataclasses.replace(plan, estimate=dataclasses.replace(plan.estimate, memory_mb=memory_mb))
    return job_services.job_create(plan=plan, name=name)


def fleet(*workers_):
    return mock.patch("jobs.training.workers.live_workers", return_value=announced(*workers_))


# --- classes and queues --------------------------------------------------------------------------

def test_a_job_goes_to_the_smallest_class_that_holds_it():
    assert queue_for_need(0) == queue_for_need(8 * GB) == "train"
    assert queue_for_need(8 * GB + 1) == "train.mem16"
    assert queue_for_need(24 * GB) == "train.mem24"
    assert queue_for_need(24 * GB + 1) == "train.memmax"


def test_a_worker_consumes_every_class_up_to_its_own():
    assert queues_for_memory(4000) == ["train"]
    assert queues_for_memory(20 * GB) == ["train", "train.mem16", "train.mem24"]
    assert queues_for_memory(300 * GB) == ["train", "train.mem16", "train.mem24", "train.memmax"]


def test_every_worker_that_fits_a_job_consumes_its_queue():
    sizes = [1, 4000, 8 * GB, 8 * GB + 1, 12_000, 16 * GB, 20_000, 24 * GB, 30_000, 100_000]
    for need in sizes:
        for memory in sizes:
            if need <= memory:
                assert queue_for_need(need) in queues_for_memory(memory), (need, memory)


def test_fit_counts_memory_per_device_and_devices():
    gpu = Capacity(device="cuda", count=2, memory_mb=24 * GB)
    assert fits(gpu, need_mb=20 * GB, devices=2) and not fits(gpu, need_mb=20 * GB, devices=4)
    assert not fits(gpu, need_mb=25 * GB)
    assert waiting_for(need_mb=20 * GB, devices=1, capacities=[]) == ""  # nobody announced: just queued
    assert waiting_for(need_mb=20 * GB, devices=1, capacities=[gpu]) == ""
    assert waiting_for(need_mb=30_000, devices=1, capacities=[gpu]) == "waiting for a worker with >= 29.3 GB"


def test_the_celery_router_sends_a_train_job_to_its_class(user, base_model, dataset):
    from celery import current_app

    with mock.patch("jobs.training.tasks.job_run.delay"):
        job = create_job(user, base_model, dataset, TrainConfig(), memory_mb=20_000)
    route = current_app.amqp.router.route({}, "training.job_run", args=(str(job.id),))
    assert route["queue"].name == "train.mem24"
    assert current_app.amqp.router.route({}, "training.job_run", args=("gone",))["queue"].name == "train"
    assert route_train_job("arena.chat_answer", (1,), {}, {}) is None


# --- what a worker announces ------------------------------------------------------------------------

def test_declared_capacity_overrides_detection_and_is_checked(settings):
    settings.WORKER_CAPACITY = '{"device": "cuda", "count": 2, "memory_mb": 81920}'
    assert workers.own_capacity() == Capacity(device="cuda", count=2, memory_mb=81920.0)
    settings.WORKER_CAPACITY = ""
    settings.TRAIN_MEMORY_LIMIT_MB = 3000
    assert workers.own_capacity().memory_mb == 3000.0
    for raw, field in [("{", "JSON"), ('{"device": "tpu", "memory_mb": 1}', "device"),
                       ('{"count": 0, "memory_mb": 1}', "count"), ('{"memory_mb": -5}', "memory_mb"),
                       ('{"memory_mb": 1, "colour": 1}', "only")]:
        with pytest.raises(ImproperlyConfigured, match=field):
            workers.parse_capacity(raw)


@pytest.fixture
def as_worker(real_redis, settings):
    """This process announcing itself as a train worker (as the Celery signals set it up)."""
    settings.WORKER_CAPACITY = '{"device": "cpu", "count": 1, "memory_mb": 4000}'
    settings.WORKER_HEARTBEAT_SECONDS = 2
    with mock.patch.dict(workers._me, name="train-test@host", queues=["train"], job=None, started=1.0):
        workers._beating.set()
        yield real_redis
        workers.withdraw()


def test_a_worker_announces_itself_with_a_ttl_and_its_job(as_worker):
    workers.announce()
    [me] = workers.live_workers()
    assert (me["name"], me["device"], me["count"], me["memory_mb"], me["job"]) == ("train-test@host", "cpu", 1,
                                                                                  4000.0, None)
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


def test_a_message_for_a_job_too_big_for_this_worker_goes_back_to_the_sweep(small_and_big, real_redis, settings):
    small, big = small_and_big
    FineTuneJob.objects.filter(id=small.id).update(status=JobStatus.CANCELLED)
    from jobs.training.dispatch import dispatch_job

    with mock.patch("jobs.training.tasks.job_run.delay"):
        dispatch_job(big.id)
    assert is_dispatched(big.id)
    settings.WORKER_CAPACITY = '{"device": "cpu", "count": 1, "memory_mb": 2000}'
    assert train_tasks.job_run(str(big.id)) == "skipped"
    big.refresh_from_db()
    assert big.status == JobStatus.QUEUED and not is_dispatched(big.id)  # the next sweep sends it again


def test_a_turn_used_for_another_job_sends_the_messages_job_again(small_and_big, real_redis):
    small, big = small_and_big
    with mock.patch("jobs.training.tasks.job_run.delay") as delay:
        hand_on(big.id, started_job_id=small.id, capacity=Capacity(device="cpu", count=1, memory_mb=2000))
        delay.assert_called_once_with(str(big.id))
        hand_on(small.id, started_job_id=small.id, capacity=Capacity(device="cpu", count=1, memory_mb=2000))
        assert delay.call_count == 1
    assert is_dispatched(big.id)


# --- submit: refuse or wait, on the form, REST and the OpenAI API ------------------------------------------

def rest_submit(api, base_model, dataset):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        return api.post("/api/v1/jobs/", {"dataset": str(dataset.id), "base_model": str(base_model.id),
                                          "config": TINY, "validation": "none"}, format="json")


def openai_submit(api, dataset):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        return api.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": f"file-{dataset.id.hex}",
                                                 "lora": {"rank": 4, "alpha": 8}}, format="json")


def form_submit(client, base_model, dataset):
    data = {"name": "j", "base_model": base_model.id, "dataset": dataset.id, **TINY, "epochs": 1, "learning_rate": 0.01,
            "grad_accum": 1, "warmup_ratio": 0, "lr_scheduler": "linear", "weight_decay": 0, "seed": 1,
            "bias": "none", "validation": "none"}
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
        assert rest.json()["waiting_for"].startswith("waiting for a worker with >= 0.")
        assert api.get(f"/api/v1/jobs/{job.id}/").json()["waiting_for"] == rest.json()["waiting_for"]
        page = client_in.get(f"/jobs/{job.id}/").content.decode()
        assert 'id="job-waiting"' in page and "waiting for a worker with &gt;= 0." in page
        assert JobEvent.objects.get(job=job, kind="waiting").message.startswith("waiting for a worker with >= 0.")
        openai = openai_submit(api, dataset)
        assert openai.status_code == 200, openai.content
        events = api.get(f"/v1/fine_tuning/jobs/{openai.json()['id']}/events").json()["data"]
        assert any(e["message"].startswith("waiting for a worker with >=") for e in events)
        assert form_submit(client_in, base_model, dataset).status_code == 302
    assert FineTuneJob.objects.count() == 3
    with fleet(("big@c", 100_000, None)):  # a big enough worker arrives: nothing to wait for
        assert api.get(f"/api/v1/jobs/{job.id}/").json()["waiting_for"] == ""


def test_a_job_that_fits_a_live_worker_is_just_queued(settings, api, base_model, dataset):
    settings.ROUTING_NO_FIT = "refuse"
    with fleet(("small@a", 100, None), ("big@c", 100_000, None)):
        rest = rest_submit(api, base_model, dataset)
    assert rest.status_code == 201 and rest.json()["waiting_for"] == ""
    assert not JobEvent.objects.filter(kind="waiting").exists()


def test_the_estimate_uses_the_workers_device_and_memory(user, base_model, dataset, settings):
    settings.TRAIN_DEVICE = "auto"
    gpus = [("gpu@a", Capacity(device="cuda", count=1, memory_mb=24 * GB))]
    est = job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(**TINY),
                   fleet=gpus, refuse=False).estimate
    assert est.memory_limit_mb == 24 * GB and est.breakdown["overhead"] == 500  # CUDA's context, bf16
    cpus = [("cpu@b", Capacity(device="cpu", count=1, memory_mb=4000))]
    est = job_plan(owner=user, dataset=dataset, base_model=base_model, config=TrainConfig(**TINY),
                   fleet=gpus + cpus, refuse=False).estimate
    assert est.memory_limit_mb == 24 * GB and est.breakdown["overhead"] == 400  # the CPU runtime, fp32: nothing converted


# --- the Workers page and API ----------------------------------------------------------------------------

def test_workers_api_shows_devices_memory_jobs_and_queue_depths(api, api_bob, user, client_in, base_model, dataset,
                                                                 real_redis):
    with mock.patch("jobs.training.tasks.job_run.delay"):
        mine = create_job(user, base_model, dataset, TrainConfig(**TINY), memory_mb=20_000, name="mine")
    real_redis.rpush("train.mem24", "m1", "m2")
    with fleet(("big@a", 30_000, str(mine.id)), ("small@b", 4000, None)):
        data = api.get("/api/v1/workers/").json()
        bobs = api_bob.get("/api/v1/workers/").json()
        page = client_in.get("/workers/").content.decode()
    big, small = data["workers"]
    assert (big["name"], big["device"], big["count"], big["memory_mb"]) == ("big@a", "cpu", 1, 30_000)
    assert big["busy"] and big["job"] == {"id": str(mine.id), "name": "mine"}
    assert big["queues"] == ["train", "train.mem16", "train.mem24", "train.memmax"]
    assert not small["busy"] and small["job"] is None and small["queues"] == ["train"]
    assert bobs["workers"][0]["busy"] and bobs["workers"][0]["job"] is None  # someone else's job: only "busy"
    queues = {q["name"]: q for q in data["queues"]}
    assert queues["train.mem24"]["messages"] == 2 and queues["train.mem24"]["queued_jobs"] == 1
    assert queues["train"]["workers"] == 2 and queues["train.mem16"]["workers"] == 1
    assert data["no_fit"] == "wait"
    assert "big@a" in page and "small@b" in page and ">mine</a>" in page and 'href="/workers/"' in page
    from rest_framework.test import APIClient

    assert APIClient().get("/api/v1/workers/").status_code in (401, 403)


def test_the_routing_settings_are_checked(monkeypatch):
    from webapp.env import env_choice, env_sizes_gb

    monkeypatch.setenv("ROUTING_MEMORY_CLASSES_GB", "8, 16,24.5")
    assert env_sizes_gb("ROUTING_MEMORY_CLASSES_GB", "1") == [8, 16, 24.5]
    for bad in ("8,x", "16,8", "0,8"):
        monkeypatch.setenv("ROUTING_MEMORY_CLASSES_GB", bad)
        with pytest.raises(ImproperlyConfigured, match="ROUTING_MEMORY_CLASSES_GB"):
            env_sizes_gb("ROUTING_MEMORY_CLASSES_GB", "1")
    monkeypatch.setenv("ROUTING_NO_FIT", "Refuse")
    assert env_choice("ROUTING_NO_FIT", "wait", ("wait", "refuse")) == "refuse"
    monkeypatch.setenv("ROUTING_NO_FIT", "drop")
    with pytest.raises(ImproperlyConfigured, match="ROUTING_NO_FIT must be one of wait, refuse"):
        env_choice("ROUTING_NO_FIT", "wait", ("wait", "refuse"))
