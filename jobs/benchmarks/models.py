"""Benchmark runs: suites of lm-evaluation-harness tasks on a base model and (for a job) its adapter."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class BenchmarkRun(models.Model):
    """One run of benchmark suites on a job's base and adapted model, or on a base model alone, made on the
    background worker. The row is the work's state, claimed like an export (jobs.training.exports): a run takes
    it with a token and a lease on the database's clock and renews the lease while it works; the sweep queues
    a row whose lease ran out again. `results` holds one entry per task (worker.benchmarks.TaskResult)."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        READY = "ready"
        FAILED = "failed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="benchmark_runs")
    job = models.ForeignKey(
        "training.FineTuneJob", on_delete=models.CASCADE, null=True, blank=True, related_name="benchmark_runs"
    )
    base_model = models.ForeignKey("base_models.BaseModel", on_delete=models.CASCADE, related_name="benchmark_runs")
    suites = models.JSONField(default=list, help_text="names of built-in suites (worker.benchmarks.SUITES)")
    dataset = models.ForeignKey(
        "user_datasets.Dataset", on_delete=models.SET_NULL, null=True, blank=True, related_name="benchmark_runs"
    )
    held_out = models.BooleanField(default=False, help_text="the user task is the job's held-out split")
    dataset_name = models.CharField(max_length=200, blank=True, help_text="kept if the dataset is deleted later")
    scoring = models.CharField(max_length=20, blank=True, help_text="the user task's: exact_match, contains, grader")
    limit = models.PositiveIntegerField(help_text="examples per task at most")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="runs started, and messages lost")
    claim = models.CharField(max_length=32, blank=True, help_text="the token of the run that holds it")
    lease_until = models.DateTimeField(null=True, blank=True, help_text="on the database's clock")
    stage = models.CharField(max_length=100, blank=True, help_text="what a running benchmark is doing, in words")
    progress = models.FloatField(default=0.0, help_text="0 to 1 while running")
    results = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"benchmark {self.id} of {self.job_id or self.base_model_id} ({self.status})"


class Eval(models.Model):
    """An eval in OpenAI's shape (`/v1/evals`): the items' schema and the testing criteria (graders in OpenAI's
    shapes, each with its pass_threshold), run on models by EvalRun rows."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="evals")
    name = models.CharField(max_length=200, blank=True)
    item_schema = models.JSONField(default=dict, blank=True)
    include_sample_schema = models.BooleanField(default=False)
    testing_criteria = models.JSONField(default=list, help_text="graders in OpenAI's shapes, checked")
    metadata = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"eval {self.id} ({self.name})"


class EvalRun(models.Model):
    """One run of an eval on the background worker: each item answered by `model` (unless the data source gives
    the answers) and graded by the eval's criteria. Claimed like a judgement (jobs.arena.judgements): a token and
    a lease on the database's clock renewed while it works; `outputs` holds one entry per item as it ends."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELED = "canceled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    eval = models.ForeignKey(Eval, on_delete=models.CASCADE, related_name="runs")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="eval_runs")
    name = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=300, blank=True, help_text="the answering model; empty for given answers")
    data_source = models.JSONField(default=dict, help_text="as given, the items left out (they are in `items`)")
    items = models.JSONField(default=list, help_text="[{item, sample?}] to grade")
    outputs = models.JSONField(default=list, blank=True, help_text="one entry per item graded so far")
    usage = models.JSONField(default=dict, blank=True, help_text="prompt, completion tokens and calls of the model")
    metadata = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    claim = models.CharField(max_length=32, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True, help_text="on the database's clock")
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"eval run {self.id} ({self.status})"
