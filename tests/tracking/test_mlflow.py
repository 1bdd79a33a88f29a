"""Jobs logged to a real MLflow tracking server (`mlflow server` on loopback, started once for the module),
read back through MLflow's REST API; and a tracker that is down: the job is not held up, and after the
retries its page and the API say it could not log.

`mlflow` is not in the product's environment (its pins clash with ours): the server runs from its own
virtual environment (`make mlflow-server`: .venv/mlflow), or MLFLOW_BIN, or an `mlflow` on PATH."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from unittest import mock

import pytest
from celery.exceptions import Retry
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from jobs.datasets import services as dataset_services
from jobs.tracking import tasks as tracking_tasks
from jobs.tracking.models import LogState, MlflowLog
from jobs.tracking.services import tracker_settings_update
from jobs.training import services as job_services
from jobs.training import tasks as train_tasks
from jobs.training.models import FineTuneJob, JobStatus, MetricPoint
from jobs.training.plan import job_plan
from tests.ports import free_port
from worker.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
FAST = dict(rank=4, alpha=8, epochs=2, learning_rate=0.01, batch_size=4, max_seq_length=128, warmup_ratio=0, seed=1)


def wait_for_mlflow_install(limit_s: float = 900) -> None:
    """`make test` installs the server's environment beside the suite and names its status file here: wait
    for it, and fail (not skip) when the install failed."""
    status = os.environ.get("MLFLOW_INSTALL_STATUS")
    if not status:
        return
    path = ROOT / status
    started = time.monotonic()
    while not path.is_file() or not path.read_text().strip():
        if time.monotonic() - started > limit_s:
            pytest.fail(f"the MLflow server's environment was not installed within {limit_s:.0f} s ({path})")
        time.sleep(1)
    if path.read_text().strip() != "0":
        log = path.with_name("mlflow-install.log")
        pytest.fail(
            "installing the MLflow server's environment failed:\n" + (log.read_text()[-3000:] if log.is_file() else "")
        )


def mlflow_bin() -> str | None:
    for candidate in (os.environ.get("MLFLOW_BIN"), str(ROOT / ".venv" / "mlflow" / "bin" / "mlflow")):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("mlflow")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    wait_for_mlflow_install()
    binary = mlflow_bin()
    if binary is None:
        pytest.skip("no mlflow server: run `make mlflow-server` (or set MLFLOW_BIN)")
    folder, port = tmp_path_factory.mktemp("mlflow"), free_port()
    command = [binary, "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db"]
    command += ["--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1"]
    started = time.monotonic()
    server = subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=(folder / "log").open("wb"))
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() - started > 180:
                    pytest.fail(f"mlflow server did not start: {(folder / 'log').read_text()[-2000:]}")
                time.sleep(0.5)
        print(f"mlflow server up in {time.monotonic() - started:.1f} s")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def loopback_allowed(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_ALLOWED_PORTS = [(1024, 65535)]
    settings.MLFLOW_RETRY_BASE_SECONDS = 0
    return settings


def new_job(user, base_model, chat_file, **config):
    dataset = dataset_services.dataset_create(owner=user, upload=SimpleUploadedFile("c.jsonl", chat_file.read_bytes()))
    plan = job_plan(
        owner=user,
        dataset=dataset,
        base_model=base_model,
        config=TrainConfig(**{**FAST, **config}),
        validation="split",
        validation_percent=25,
        validation_seed=3,
    )
    with mock.patch("jobs.training.tasks.job_run.delay"):
        return job_services.job_create(plan=plan, name="tracked")


def run_logging(log_id) -> list[str]:
    """The queue's attempts, back to back (each retry sent again at once), and their outcomes."""
    outcomes = []
    with mock.patch.object(tracking_tasks.mlflow_log, "retry", side_effect=Retry()):
        while True:
            try:
                outcomes.append(tracking_tasks.mlflow_log(str(log_id)))
                return outcomes
            except Retry:
                outcomes.append("retry")


def test_a_job_is_logged_to_mlflow_and_reads_back(
    mlflow_server, loopback_allowed, user, base_model, chat_file, client_in, django_capture_on_commit_callbacks
):
    tracker_settings_update(owner=user, mlflow_uri=mlflow_server, experiment="tiny runs", token="t0ken")
    job = new_job(user, base_model, chat_file)
    with (
        mock.patch.object(tracking_tasks.mlflow_log, "delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert train_tasks.job_run(str(job.id)) == "succeeded"
    entry = MlflowLog.objects.get(job=job)
    assert entry.attempts == 0 and entry.state == LogState.PENDING, "the training never waits on the tracker"
    delay.assert_called_once_with(str(entry.id))
    assert run_logging(entry.id) == ["logged"]
    entry.refresh_from_db()

    run = get_json(f"{mlflow_server}/api/2.0/mlflow/runs/get?run_id={entry.run_id}")["run"]
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "tracked"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["rank"] == "4" and params["base_model"] == "tiny-llama" and params["learning_rate"] == "0.01"
    points = MetricPoint.objects.filter(job=job).order_by("step")
    for key, field in (("loss", "train_loss"), ("lr", "lr"), ("eval_loss", "eval_loss")):
        url = f"{mlflow_server}/api/2.0/mlflow/metrics/get-history?run_id={entry.run_id}&metric_key={key}"
        history = {m["step"]: m["value"] for m in get_json(url)["metrics"]}
        expected = {p.step: getattr(p, field) for p in points if getattr(p, field) is not None}
        assert history == pytest.approx(expected) and expected, key
    metric_keys = {m["key"] for m in run["data"]["metrics"]}
    assert "evaluation/loss/adapter" in metric_keys
    files = get_json(f"{mlflow_server}/api/2.0/mlflow/artifacts/list?run_id={entry.run_id}&path=adapter")["files"]
    assert [f["path"] for f in files] == [f"adapter/adapter-{job.short_id}.zip"]
    assert files[0]["file_size"] == job.adapter.size_bytes

    answer = client_in.get(f"/api/v1/jobs/{job.id}/tracking/").json()["mlflow"]
    assert answer["state"] == "logged" and answer["run_id"] == entry.run_id
    assert f"logged to MLflow: run {entry.run_id}" in client_in.get(f"/jobs/{job.id}/").content.decode()
    assert run_logging(entry.id) == ["skipped"], "a message sent twice logs nothing twice"


def test_a_tracker_that_is_down_fails_nothing_and_says_so(
    loopback_allowed, user, base_model, chat_file, client_in, django_capture_on_commit_callbacks
):
    loopback_allowed.MLFLOW_MAX_ATTEMPTS = 3
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracker_settings_update(owner=user, mlflow_uri=closed)
    job = new_job(user, base_model, chat_file)
    with mock.patch.object(tracking_tasks.mlflow_log, "delay"), django_capture_on_commit_callbacks(execute=True):
        job_services.job_cancel(job=job, by=user)  # a job that ends at once is logged too (as a killed run)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    entry = MlflowLog.objects.get(job=job)
    # A lost message (a broker restart) is sent again by the sweep once the log has sat untouched long enough.
    assert tracking_tasks.mlflow_sweep() == 0
    MlflowLog.objects.filter(id=entry.id).update(updated=timezone.now() - dt.timedelta(hours=1))
    with mock.patch("jobs.common.queue.send") as send:
        assert tracking_tasks.mlflow_sweep() == 1 and tracking_tasks.mlflow_sweep() == 0
    send.assert_called_once_with("tracking.mlflow_log", str(entry.id))
    started = time.monotonic()
    assert run_logging(entry.id) == ["retry", "retry", "failed"]
    assert time.monotonic() - started < 10
    entry.refresh_from_db()
    assert entry.state == LogState.FAILED and entry.attempts == 3 and entry.last_error == "connection refused"
    answer = client_in.get(f"/api/v1/jobs/{job.id}/tracking/").json()["mlflow"]
    assert answer["message"] == "could not log to MLflow: connection refused"
    assert "could not log to MLflow: connection refused" in client_in.get(f"/jobs/{job.id}/").content.decode()
    assert FineTuneJob.objects.get(id=job.id).status == JobStatus.CANCELLED


def test_tracking_settings_over_rest_and_on_the_page(api, client_in, settings):
    answer = api.put("/api/v1/account/tracking/", {"mlflow_uri": "http://10.0.0.5:8080"}, format="json")
    assert answer.status_code == 400 and "private address" in json.dumps(answer.json())
    answer = api.put(
        "/api/v1/account/tracking/",
        {"mlflow_uri": "https://mlflow.example.com", "experiment": "mine", "token": "secret"},
        format="json",
    )
    assert answer.status_code == 200
    body = api.get("/api/v1/account/tracking/").json()
    assert body["mlflow_uri"] == "https://mlflow.example.com" and body["token_set"] is True
    assert "secret" not in json.dumps(body)

    page = client_in.get("/account/tracking/").content.decode()
    assert 'id="experiment-tracking"' in page and 'value="https://mlflow.example.com"' in page and "secret" not in page
    answer = client_in.post("/account/tracking/", {"mlflow_uri": "http://localhost:8080", "enabled": "1"})
    assert answer.status_code == 400 and "loopback" in answer.content.decode()
    answer = client_in.post("/account/tracking/", {"mlflow_uri": "", "experiment": "x", "enabled": "1"})
    assert answer.status_code == 200 and api.get("/api/v1/account/tracking/").json()["token_set"] is True
