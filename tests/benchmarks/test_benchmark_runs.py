"""Benchmark runs over REST and on the background worker: 400s naming the field (suites.<i>, scoring, limit,
dataset), another owner's job or run a 404, a run through the real task with the tiny model (base and adapted per
task with an interval, the user's dataset task, a line in the job's log), the forgetting warning on a constructed
case, cancel, and the automatic run after a job when the server asks for it."""

from __future__ import annotations

from unittest import mock

import pytest

pytest.importorskip("lm_eval")

from jobs.benchmarks import services, tasks  # noqa: E402
from jobs.benchmarks.models import BenchmarkRun  # noqa: E402
from jobs.common.storage import media_path, media_relative  # noqa: E402
from jobs.training import services as job_services  # noqa: E402
from jobs.training.models import Adapter, FineTuneJob, JobEvent, JobStatus  # noqa: E402
from jobs.training.plan import job_plan  # noqa: E402
from tests.tiny_model import build_random_adapter  # noqa: E402
from worker.config import TrainConfig  # noqa: E402


@pytest.fixture
def job(user, dataset, base_model, tiny_llama):
    """A succeeded job whose adapter is a real (random) LoRA of the tiny Llama."""
    with mock.patch("jobs.training.tasks.job_run.delay"):
        made = job_services.job_create(
            plan=job_plan(
                owner=user,
                dataset=dataset,
                base_model=base_model,
                config=TrainConfig(),
                validation="split",
                validation_percent=25,
            )  # fmt: skip
        )
    folder = media_path(f"jobs/{made.id}/adapter")
    build_random_adapter(tiny_llama, folder, seed=5)
    Adapter.objects.create(job=made, folder=media_relative(folder), zip_file="x.zip", size_bytes=1, sha256="0" * 64)
    FineTuneJob.objects.filter(id=made.id).update(status=JobStatus.SUCCEEDED)
    return FineTuneJob.objects.get(id=made.id)


def ask(api, url, body):
    with mock.patch("jobs.benchmarks.tasks.benchmark_run.delay") as delay:
        return api.post(url, body, format="json"), delay


def test_rest_refuses_in_words_naming_the_field_and_hides_other_owners(api, api_bob, job, dataset, base_model):
    url = f"/api/v1/jobs/{job.id}/benchmarks/"
    for body, field in [
        ({"suites": ["general-skills", "nope"]}, "suites.1"),
        ({"suites": "general-skills"}, "suites"),
        ({"suites": []}, "suites"),
        ({"suites": ["general-skills"], "limit": 0}, "limit"),
        ({"dataset": str(dataset.id), "scoring": "fuzzy"}, "scoring"),
        ({"dataset": str(dataset.id), "scoring": "grader"}, "scoring"),  # this job has no grader
        ({"dataset": "7d4c1a52-2a51-4d47-9d55-1b1a3c3f2a10"}, "dataset"),
        ({"suites": ["general-skills"], "extra": 1}, "extra"),
    ]:
        refused, delay = ask(api, url, body)
        assert refused.status_code == 400, (body, refused.json())
        assert field in str(refused.json()), (body, refused.json())
        assert not delay.called
    made, _ = ask(api, url, {"suites": ["general-skills"], "dataset": "held-out", "scoring": "contains", "limit": 3})
    assert made.status_code == 202, made.json()
    run = made.json()
    assert (run["status"], run["suites"], run["scoring"], run["limit"]) == ("queued", ["general-skills"], "contains", 3)
    # Another user: the job, its runs and the run itself do not exist for them.
    assert ask(api_bob, url, {"suites": ["general-skills"]})[0].status_code == 404
    assert api_bob.get(url).status_code == 404
    assert api_bob.get(f"/api/v1/benchmarks/{run['id']}/").status_code == 404
    assert api_bob.post(f"/api/v1/benchmarks/{run['id']}/cancel/").status_code == 404
    assert api_bob.get("/api/v1/benchmarks/").json() == []
    assert [r["id"] for r in api.get(url).json()] == [run["id"]]
    # Only a job that succeeded with its adapter can be compared with its base.
    FineTuneJob.objects.filter(id=job.id).update(status=JobStatus.FAILED)
    failed, _ = ask(api, url, {"suites": ["general-skills"]})
    assert failed.status_code == 409 and failed.json()["error"]["field"] == "job", failed.json()
    # A base model alone; the suites the page offers.
    alone, _ = ask(api, "/api/v1/benchmarks/", {"base_model": str(base_model.id), "suites": ["general-skills"]})
    assert alone.status_code == 202 and alone.json()["job"] is None, alone.json()
    missing, _ = ask(api, "/api/v1/benchmarks/", {"base_model": "7d4c1a52-2a51-4d47-9d55-1b1a3c3f2a10"})
    assert missing.status_code == 400 and missing.json()["error"]["field"] == "base_model"
    suites = {s["name"]: s for s in api.get("/api/v1/benchmarks/suites/").json()}
    assert suites["general-skills"]["bundled"] and "gsm8k" in suites["gsm8k"]["tasks"]


def test_a_run_through_the_background_task_with_the_tiny_model(api, job):
    # The job's grader scores its held-out rows: 1 for an answer that is not the reference (a random model's).
    grader = {"type": "string_check", "name": "differs", "input": "{{sample.output_text}}",
              "reference": "{{item.reference}}", "operation": "ne"}  # fmt: skip
    FineTuneJob.objects.filter(id=job.id).update(grader=grader)
    job.refresh_from_db()
    with mock.patch("jobs.benchmarks.tasks.benchmark_run.delay"):
        run = services.benchmark_request(
            owner=job.owner, base_model=job.base_model, job=job, suites=["general-skills"], dataset="held-out",
            scoring="grader", limit=3,
        )  # fmt: skip
    assert tasks.benchmark_run(str(run.id)) == "ready"
    got = api.get(f"/api/v1/benchmarks/{run.id}/").json()
    assert got["status"] == "ready" and got["progress"] == 1.0, got
    by_task = {r["task"]: r for r in got["results"]}
    assert set(by_task) == {"general_arithmetic", "general_bigger_number", "your_dataset"}
    for row in by_task.values():
        for side in ("base", "adapted"):
            score = row[side]
            assert 0 <= score["low"] <= score["value"] <= score["high"] <= 1
    assert by_task["your_dataset"]["metric"] == "grader" and not by_task["your_dataset"]["general"]
    assert by_task["your_dataset"]["base"]["value"] == by_task["your_dataset"]["adapted"]["value"] == 1.0
    assert by_task["general_bigger_number"]["examples"] == 3
    assert JobEvent.objects.filter(job=job, kind="benchmark", message__startswith="benchmark ready").exists()
    assert tasks.benchmark_run(str(run.id)) == "skipped"  # a duplicate message does nothing


def test_the_forgetting_warning_past_the_margin(api, job, settings):
    settings.BENCHMARK_FORGET_MARGIN = 5
    general = {"suite": "general-skills", "metric": "exact_match", "general": True, "examples": 50}
    run = BenchmarkRun.objects.create(
        owner=job.owner, job=job, base_model=job.base_model, suites=["general-skills"], limit=50,
        status=BenchmarkRun.Status.READY,
        results=[
            {**general, "task": "general_arithmetic", "base": {"value": 0.62}, "adapted": {"value": 0.30}},
            {**general, "task": "general_bigger_number", "base": {"value": 0.50}, "adapted": {"value": 0.48}},
        ],
    )  # fmt: skip
    got = api.get(f"/api/v1/benchmarks/{run.id}/").json()
    assert got["margin_points"] == 5 and len(got["warnings"]) == 1
    assert "32.0 points on general_arithmetic" in got["warnings"][0]
    settings.BENCHMARK_FORGET_MARGIN = 40
    assert api.get(f"/api/v1/benchmarks/{run.id}/").json()["warnings"] == []


def test_cancel_a_queued_run_and_a_finished_one_refuses(api, job):
    with mock.patch("jobs.benchmarks.tasks.benchmark_run.delay"):
        run = services.benchmark_request(owner=job.owner, base_model=job.base_model, job=job, suites=["general-skills"])
    cancelled = api.post(f"/api/v1/benchmarks/{run.id}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert api.post(f"/api/v1/benchmarks/{run.id}/cancel/").status_code == 409
    assert tasks.benchmark_run(str(run.id)) == "skipped"


def test_a_running_benchmark_stops_when_cancelled(job):
    with mock.patch("jobs.benchmarks.tasks.benchmark_run.delay"):
        run = services.benchmark_request(owner=job.owner, base_model=job.base_model, job=job, suites=["general-skills"])
    real = services.benchmark_progress

    def cancel_on_first_task(row, token, *, stage, progress):
        if stage.startswith("general"):
            BenchmarkRun.objects.filter(id=row.id).update(cancel_requested=True)
        return real(row, token, stage=stage, progress=progress)

    with mock.patch.object(services, "benchmark_progress", cancel_on_first_task):
        assert tasks.benchmark_run(str(run.id)) == "cancelled"
    assert BenchmarkRun.objects.get(id=run.id).status == "cancelled"


def test_after_a_job_only_when_the_server_asks(job, settings, django_capture_on_commit_callbacks):
    settings.BENCHMARK_AFTER_JOB = []
    assert services.benchmark_after_job(job) is None
    settings.BENCHMARK_AFTER_JOB = ["general-skills"]
    with mock.patch("jobs.benchmarks.tasks.benchmark_run.delay") as delay:
        with django_capture_on_commit_callbacks(execute=True):
            run = services.benchmark_after_job(job)
    assert run is not None and run.suites == ["general-skills"] and run.job_id == job.id
    delay.assert_called_once_with(str(run.id))


def test_the_job_page_shows_the_benchmark_card_for_a_job_with_an_adapter(client_in, job):
    page = client_in.get(f"/jobs/{job.id}/").content.decode()
    assert 'id="benchmarks"' in page and "app/benchmarks.js" in page
    assert f'data-list-url="/api/v1/jobs/{job.id}/benchmarks/"' in page
    assert 'value="held-out"' in page  # the job has a held-out split
    FineTuneJob.objects.filter(id=job.id).update(status=JobStatus.FAILED)
    assert 'id="benchmarks"' not in client_in.get(f"/jobs/{job.id}/").content.decode()
