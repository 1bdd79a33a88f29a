"""The one way services hand work to Celery: by the task's fixed name, after the transaction commits.

Services never import `tasks` modules (tasks import services), so the arrows run one way; the
names below are the contract with the `tasks` modules that register them."""

from __future__ import annotations

from celery import current_app
from django.db import transaction

TRAIN_JOB = "training.job_run"
MERGE_ADAPTER = "training.adapter_merge"
CHAT_ANSWER = "arena.chat_answer"
CHAT_ROUND = "arena.chat_round"
JUDGEMENT_RUN = "arena.judgement_run"
WEBHOOK_DELIVER = "webhooks.deliver"
MLFLOW_LOG = "tracking.mlflow_log"
HUB_DOWNLOAD = "base_models.hub_download"
GGUF_CONVERT = "base_models.gguf_convert"
HUB_PUBLISH = "training.hub_publish"
BENCHMARK_RUN = "benchmarks.run"
EVAL_RUN = "benchmarks.eval_run"
# Periodic sweeps (scheduled by Celery beat) that re-queue work whose message was lost.
SWEEP_MERGES = "training.sweep_merges"
SWEEP_WEBHOOKS = "webhooks.sweep"
SWEEP_MLFLOW = "tracking.sweep"
SWEEP_JOBS = "training.sweep_jobs"
EXPIRE_FILES = "training.expire_files"
EXPIRE_UPLOADS = "user_datasets.expire_uploads"
CHECK_UPLOAD = "user_datasets.check_upload"
TOKEN_PROFILE = "user_datasets.token_profile"
SWEEP_DATASETS = "user_datasets.sweep"
SWEEP_ANSWERS = "arena.sweep_answers"
SWEEP_JUDGEMENTS = "arena.sweep_judgements"
SWEEP_SWEEPS = "sweeps.advance"  # moves hyperparameter sweeps (jobs.sweeps) on
SWEEP_BENCHMARKS = "benchmarks.sweep"
SWEEP_EVALS = "benchmarks.sweep_evals"


def registered_task(task_name: str):
    """The task registered under this name (a web process loads the apps' tasks modules on first use)."""
    app = current_app
    if task_name not in app.tasks:
        app.loader.import_default_modules()
    return app.tasks[task_name]


def send(task_name: str, *args) -> None:
    """Send a task now (routed to its queue by name; run in-process in eager mode)."""
    registered_task(task_name).delay(*args)


def enqueue(task_name: str, *args, robust: bool = False) -> None:
    """Send a task once the current transaction commits (at once outside a transaction). `robust`: a
    broker error is logged, not raised (for work a sweep sends again)."""
    transaction.on_commit(lambda: send(task_name, *args), robust=robust)
