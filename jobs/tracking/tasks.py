"""The background queue's logging of a finished job to MLflow: settings, metrics per step, evaluation and the
adapter, each step recorded so a retry goes on where the last attempt stopped. A tracker that is down never
touches the job: the attempts back off and, past the last, the job's log says it could not log."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db.models import F
from django.utils import timezone

from jobs.common import blobs, queue
from jobs.common.outbound import OutboundError
from jobs.common.shares import DELIVERIES, owner_share
from jobs.tracking.mlflow_rest import MlflowClient, TrackerError
from jobs.tracking.models import LogState, MlflowLog
from jobs.tracking.services import mlflow_message, mlflow_policy, mlflow_token
from jobs.training.files import job_evaluation
from jobs.training.models import FineTuneJob, JobStatus, MetricPoint
from jobs.training.services import job_event

log = logging.getLogger(__name__)

RUN_STATUS: dict[str, str] = {
    JobStatus.SUCCEEDED: "FINISHED",
    JobStatus.FAILED: "FAILED",
    JobStatus.CANCELLED: "KILLED",
    JobStatus.PRUNED: "KILLED",
}
NOT_METRICS = {"step"}


def mlflow_backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based)."""
    return settings.MLFLOW_RETRY_BASE_SECONDS * 2 ** (attempt - 1)


def _ms(moment) -> int:
    return int(moment.timestamp() * 1000)


def _param(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def job_params(job: FineTuneJob) -> dict[str, str]:
    """The job's settings as MLflow params, with the base model, the data's hash and the precision."""
    extra = {"base_model": job.base_model.name, "dataset_sha256": job.dataset_sha256, "precision": job.precision}
    return {k: _param(v) for k, v in {**job.config, **extra}.items() if v is not None and v != ""}


def job_metric_history(job: FineTuneJob) -> list[dict[str, Any]]:
    """Every numeric value of every stored metric point, at its step and the time it was recorded."""
    rows = []
    for point in MetricPoint.objects.filter(job=job).order_by("step"):
        for key, value in point.as_event().items():
            if key not in NOT_METRICS and _is_number(value):
                rows.append({"key": key, "value": float(value), "timestamp": _ms(point.created), "step": point.step})
    return rows


def evaluation_metrics(evaluation: dict, *, step: int, at_ms: int) -> list[dict[str, Any]]:
    """The end-of-job evaluation's numbers (`evaluation/loss/adapter`, ...), its per-prompt rows left out."""
    rows: list[dict[str, Any]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}/{key}", inner)
        elif _is_number(value):
            rows.append({"key": prefix, "value": float(value), "timestamp": at_ms, "step": step})

    walk("evaluation", {k: v for k, v in evaluation.items() if k != "rows"})
    return rows


def _step_run(client: MlflowClient, entry: MlflowLog, job: FineTuneJob) -> None:
    experiment_id = client.experiment_id(entry.experiment)
    tags = {"lora_studio.job_id": str(job.id), "lora_studio.base_model": job.base_model.name}
    info = client.run_create(
        experiment_id, run_name=job.name or f"job {job.short_id}", start_ms=_ms(job.created), tags=tags
    )
    entry.run_id = info["run_id"]
    MlflowLog.objects.filter(id=entry.id).update(run_id=entry.run_id)


def _step_params(client: MlflowClient, entry: MlflowLog, job: FineTuneJob) -> None:
    client.params_log(entry.run_id, job_params(job))


def _step_metrics(client: MlflowClient, entry: MlflowLog, job: FineTuneJob) -> None:
    rows = job_metric_history(job)
    evaluation = job_evaluation(job) if job.status == JobStatus.SUCCEEDED else None
    if evaluation:
        rows += evaluation_metrics(evaluation, step=job.step, at_ms=_ms(job.finished or timezone.now()))
    client.metrics_log(entry.run_id, rows)


def _step_artifacts(client: MlflowClient, entry: MlflowLog, job: FineTuneJob) -> None:
    if not job.has_adapter:
        return
    artifact_uri = client.run_info(entry.run_id)["artifact_uri"]
    zip_name = job.adapter.zip_file
    client.artifact_put(artifact_uri, f"adapter/{zip_name.rsplit('/', 1)[-1]}", blobs.fetch(zip_name))


def _step_end(client: MlflowClient, entry: MlflowLog, job: FineTuneJob) -> None:
    client.tags_set(entry.run_id, {"lora_studio.status": job.status})
    client.run_end(entry.run_id, RUN_STATUS.get(job.status, "FINISHED"), _ms(job.finished or timezone.now()))


STEPS = (
    ("run", _step_run),
    ("params", _step_params),
    ("metrics", _step_metrics),
    ("artifacts", _step_artifacts),
    ("end", _step_end),
)


def mlflow_job_log(entry: MlflowLog) -> None:
    """Run the steps not yet done, recording each as it succeeds; TrackerError stops at the failing one."""
    job = FineTuneJob.objects.select_related("base_model").get(id=entry.job_id)
    client = MlflowClient(
        entry.uri, token=mlflow_token(entry), timeout_s=settings.MLFLOW_TIMEOUT_SECONDS, policy=mlflow_policy(entry)
    )
    for name, step in STEPS:
        if name in entry.done:
            continue
        step(client, entry, job)
        entry.done = [*entry.done, name]
        MlflowLog.objects.filter(id=entry.id).update(done=entry.done, updated=timezone.now())


@shared_task(name=queue.MLFLOW_LOG, bind=True, max_retries=None, acks_late=True)
def mlflow_log(self, log_id: str) -> str:
    """One attempt at logging a finished job to MLflow; on failure record why and retry later, up to
    MLFLOW_MAX_ATTEMPTS in all, then tell the job's log that it could not log. Runs within the owner's share of
    deliveries (jobs.common.shares), so one user's slow server leaves the rest to others."""
    entry = MlflowLog.objects.select_related("job").filter(id=log_id, state=LogState.PENDING).first()
    if entry is None:
        return "skipped"
    with owner_share(DELIVERIES, entry.job.owner_id):
        return _attempt(self, entry)


def _attempt(task, entry: MlflowLog) -> str:
    # Counting the attempt is the claim: a message sent twice never makes an extra attempt.
    if not MlflowLog.objects.filter(
        id=entry.id, state=LogState.PENDING, attempts__lt=settings.MLFLOW_MAX_ATTEMPTS
    ).update(attempts=F("attempts") + 1, updated=timezone.now()):
        return "skipped"
    entry.refresh_from_db()
    try:
        try:
            mlflow_job_log(entry)
        except OutboundError as exc:  # the site default's own URI cannot be used
            raise TrackerError(exc.category) from exc
        except (KeyError, TypeError, ValueError) as exc:  # a JSON answer without the fields MLflow's API has
            log.warning("MLflow at %s answered unexpectedly: %s: %s", entry.uri, type(exc).__name__, exc)
            raise TrackerError("unexpected answer (is this an MLflow tracking server?)") from exc
    except TrackerError as exc:
        gave_up = entry.attempts >= settings.MLFLOW_MAX_ATTEMPTS
        MlflowLog.objects.filter(id=entry.id).update(
            last_error=str(exc), state=LogState.FAILED if gave_up else LogState.PENDING, updated=timezone.now()
        )
        if gave_up:
            entry.refresh_from_db()
            log.warning("MLflow logging of job %s gave up after %d attempts: %s", entry.job_id, entry.attempts, exc)
            job_event(job_id=entry.job_id, kind="tracker", message=mlflow_message(entry))
            return "failed"
        raise task.retry(countdown=mlflow_backoff(entry.attempts), exc=exc) from exc
    MlflowLog.objects.filter(id=entry.id).update(state=LogState.LOGGED, last_error="", updated=timezone.now())
    entry.refresh_from_db()
    job_event(job_id=entry.job_id, kind="tracker", message=mlflow_message(entry))
    return "logged"


SWEEP_GRACE_S = 300  # past its backoff, how long a pending log may sit untouched before the sweep sends it again


@shared_task(name=queue.SWEEP_MLFLOW, acks_late=True)
def mlflow_sweep() -> int:
    """Queue again the pending logs whose message was lost (a broker restart, a lost retry); returns how many.
    Each is claimed by moving its `updated` stamp, so two sweeps never send one twice."""
    now = timezone.now()
    count = 0
    pending = MlflowLog.objects.filter(state=LogState.PENDING, attempts__lt=settings.MLFLOW_MAX_ATTEMPTS)
    for log_id, attempts, updated in pending.values_list("id", "attempts", "updated"):
        wait = (mlflow_backoff(attempts) if attempts else 0) + settings.MLFLOW_TIMEOUT_SECONDS + SWEEP_GRACE_S
        if updated > now - dt.timedelta(seconds=wait):
            continue
        if MlflowLog.objects.filter(id=log_id, updated=updated).update(updated=now) == 1:
            queue.send(queue.MLFLOW_LOG, str(log_id))
            count += 1
    return count
