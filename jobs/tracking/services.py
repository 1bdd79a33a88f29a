"""Writes of experiment tracking: a user's MLflow settings, and queueing a finished job's logging."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from jobs.common import queue
from jobs.common.outbound import OutboundPolicy, registration_refusal, url_target
from jobs.tracking.models import LogState, MlflowLog, TrackerSettings
from jobs.training.models import FineTuneJob
from worker.errors import InputError

DEFAULT_EXPERIMENT = "LoRA Studio"


@dataclass(frozen=True)
class MlflowTarget:
    """Where one user's jobs are logged: the server, the experiment, and whether it is the site's own."""

    uri: str
    experiment: str
    site_default: bool


def tracker_settings_update(*, owner, mlflow_uri: str, experiment: str = "", token: str | None = None, enabled=True):
    """Save the user's MLflow server (empty: the site default). The URI must be http(s) on an allowed port and not
    a private, loopback or local address unless an administrator allows it (InputError with the field's name).
    `token` None keeps the stored one; "" clears it."""
    mlflow_uri = mlflow_uri.strip().rstrip("/")
    if mlflow_uri:
        refused = registration_refusal(mlflow_uri, OutboundPolicy.from_settings())
        if refused is not None:
            raise InputError("mlflow_uri", f"this tracking URI cannot be used: {refused.category}")
    if len(experiment) > 200:
        raise InputError("experiment", "at most 200 characters")
    values = {"mlflow_uri": mlflow_uri, "experiment": experiment.strip(), "enabled": bool(enabled)}
    if token is not None:
        values["token"] = token.strip()
    tracker, _ = TrackerSettings.objects.update_or_create(owner=owner, defaults=values)
    return tracker


def mlflow_target(owner) -> MlflowTarget | None:
    """The user's own MLflow server, else the site default (settings MLFLOW_TRACKING_URI), else None."""
    own = TrackerSettings.objects.filter(owner=owner).first()
    if own is not None and not own.enabled:
        return None
    experiment = (own.experiment if own else "") or settings.MLFLOW_EXPERIMENT or DEFAULT_EXPERIMENT
    if own is not None and own.mlflow_uri:
        return MlflowTarget(own.mlflow_uri, experiment, site_default=False)
    if settings.MLFLOW_TRACKING_URI:
        return MlflowTarget(settings.MLFLOW_TRACKING_URI.rstrip("/"), experiment, site_default=True)
    return None


def mlflow_token(log: MlflowLog) -> str:
    """The Bearer token for this log's server: the site's for the site default, else the owner's."""
    if log.site_default:
        return settings.MLFLOW_TRACKING_TOKEN
    own = TrackerSettings.objects.filter(owner_id=log.job.owner_id).first()
    return own.token if own else ""


def mlflow_policy(log: MlflowLog) -> OutboundPolicy:
    """The outbound rules for this log: the site's, plus the site default's own host and port (an administrator
    chose it, as they would allow a host); a user's server gets the site's rules only."""
    policy = OutboundPolicy.from_settings()
    if not log.site_default:
        return policy
    target = url_target(log.uri, OutboundPolicy.build(ports=[(1, 65535)], hosts=[]))
    return OutboundPolicy.build(
        ports=[*policy.allowed_ports, target.port], hosts=[*settings.WEBHOOK_ALLOWED_HOSTS, target.host]
    )


def mlflow_log_for_job(job: FineTuneJob) -> MlflowLog | None:
    """Queue the logging of a finished job to its owner's MLflow, if they have one (or the site has)."""
    target = mlflow_target(job.owner)
    if target is None:
        return None
    with transaction.atomic():
        log, created = MlflowLog.objects.get_or_create(
            job=job, defaults=dict(uri=target.uri, experiment=target.experiment, site_default=target.site_default)
        )
        if created:
            queue.enqueue(queue.MLFLOW_LOG, str(log.id), robust=True)
    return log


def mlflow_log_state(*, job: FineTuneJob) -> dict | None:
    """The job's MLflow logging for the page and the API, or None when it is not logged anywhere."""
    log = MlflowLog.objects.filter(job=job).first()
    if log is None:
        return None
    return {
        "state": log.state,
        "uri": log.uri,
        "experiment": log.experiment,
        "run_id": log.run_id,
        "attempts": log.attempts,
        "error": log.last_error,
        "message": mlflow_message(log),
    }


def mlflow_message(log: MlflowLog) -> str:
    """The line the job page shows."""
    if log.state == LogState.LOGGED:
        return f"logged to MLflow: run {log.run_id} in experiment {log.experiment!r}"
    if log.state == LogState.FAILED:
        return f"could not log to MLflow: {log.last_error}"
    return "logging to MLflow" + (
        f" (attempt {log.attempts} failed: {log.last_error}; retrying)" if log.last_error else ""
    )
