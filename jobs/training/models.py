"""Jobs and what they produce. Primary keys of user-facing rows are random UUIDs (opaque)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from jobs.base_models.models import BaseModel
from jobs.datasets.models import Dataset


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PRUNED = "pruned"  # a sweep's trial stopped early by its pruner (jobs.sweeps): not promising enough


TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PRUNED)


class FineTuneJob(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    name = models.CharField(max_length=200, blank=True)
    dataset = models.ForeignKey(Dataset, on_delete=models.SET_NULL, null=True, related_name="jobs")
    dataset_name = models.CharField(max_length=200, blank=True, help_text="kept if the dataset is deleted later")
    dataset_sha256 = models.CharField(max_length=64, blank=True)
    validation = models.JSONField(
        default=dict, blank=True, help_text="how the validation split was made: kind, percent, seed, rows"
    )
    grader = models.JSONField(
        null=True, blank=True, help_text="reinforcement: the grader that scores the answers, in OpenAI's shape"
    )
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="jobs")
    config = models.JSONField(help_text="a worker.config.TrainConfig as a dict")
    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    stop_requested = models.CharField(max_length=10, blank=True, help_text="cancel or pause, set by the web")
    attempts = models.PositiveIntegerField(default=0, help_text="1 + the crashes; pauses and resumes do not count")
    error = models.TextField(blank=True)
    error_code = models.CharField(
        max_length=40, blank=True, help_text="what kind of failure: out_of_memory, training_error, dataset_error, ..."
    )
    worker = models.CharField(max_length=200, blank=True)
    claim = models.CharField(
        max_length=32,
        blank=True,
        db_index=True,
        help_text="the token of the worker run that owns the job; its writes are fenced by it",
    )
    lease_until = models.DateTimeField(null=True, blank=True, help_text="on the database's clock")
    run_started = models.DateTimeField(null=True, blank=True, help_text="when the current (or last) run began")
    run_seconds = models.FloatField(default=0, help_text="training time of every run so far")
    crashes = models.JSONField(default=list, blank=True, help_text="when a worker died holding the job (ISO times)")
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    final_loss = models.FloatField(null=True, blank=True)
    precision = models.CharField(
        max_length=8,
        blank=True,
        help_text="the dtype the frozen base trained in (fp32, bf16, "
        "fp16): config precision as the train worker resolved it; empty until a run starts",
    )
    stored_bytes = models.BigIntegerField(
        null=True, blank=True, help_text="bytes stored under the job's folder, for the storage quota"
    )
    memory_mb = models.FloatField(
        default=0,
        help_text="the pre-flight memory estimate per device (MB); "
        "routes the job to train workers that fit it (0: unknown, any)",
    )
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "jobs_finetunejob"  # tables keep the names of the single app this project once had
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.name or f"job {self.id}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def short_id(self) -> str:
        return str(self.id)[:8]

    @property
    def has_adapter(self) -> bool:
        """Succeeded with its adapter stored: it can be downloaded, compared and merged."""
        return self.status == JobStatus.SUCCEEDED and hasattr(self, "adapter")


class MetricPoint(models.Model):
    job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, related_name="metrics")
    step = models.PositiveIntegerField()
    epoch = models.FloatField(default=0)
    train_loss = models.FloatField(null=True)
    eval_loss = models.FloatField(null=True)
    lr = models.FloatField(null=True)
    tokens_per_s = models.FloatField(null=True)
    extra = models.JSONField(default=dict)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "jobs_metricpoint"
        ordering = ["step"]
        constraints = [models.UniqueConstraint(fields=["job", "step"], name="unique_metric_step")]

    def as_event(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "loss": self.train_loss,
            "eval_loss": self.eval_loss,
            "lr": self.lr,
            "tokens_per_s": self.tokens_per_s,
            **self.extra,
        }


class JobEvent(models.Model):
    """Human-readable messages from a job's life (setup, resume, errors)."""

    job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=30)
    message = models.TextField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "jobs_jobevent"
        ordering = ["id"]


class Adapter(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.OneToOneField(FineTuneJob, on_delete=models.CASCADE, related_name="adapter")
    folder = models.CharField(max_length=300, help_text="adapter folder under MEDIA_ROOT")
    zip_file = models.CharField(max_length=300, help_text="zip under MEDIA_ROOT")
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "jobs_adapter"


class ExportFormat(models.TextChoices):
    MERGED = "merged"  # base + adapter as one safetensors model
    GGUF_LORA = "gguf-lora"  # the base as GGUF + the adapter as a GGUF LoRA + an Ollama Modelfile
    GGUF_MERGED = "gguf-merged"  # the merged model as one GGUF (f16, bf16, q8_0, q4_k_m) + a Modelfile


class JobExport(models.Model):
    """One export of a job's adapter (merged safetensors, GGUF LoRA, merged GGUF), zipped for download and made on
    the background worker; at most one per job, format and quantization. The row is the work's state: a run claims
    it with a token and a lease on the database's clock and renews the lease while it runs; the sweep re-queues a
    row whose lease ran out. `size_bytes` feeds the quota. (Before GGUF these were the MergedExport rows.)"""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        READY = "ready"
        FAILED = "failed"

    job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, related_name="exports")
    format = models.CharField(max_length=12, choices=ExportFormat.choices, default=ExportFormat.MERGED)
    quantization = models.CharField(max_length=8, blank=True, help_text="gguf-merged: f16, bf16, q8_0 or q4_k_m")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="runs started, and messages lost")
    claim = models.CharField(max_length=32, blank=True, help_text="the token of the export run that holds it")
    lease_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text="on the database's clock: queued, when its message counts as lost; "
        "running, when its worker counts as dead",
    )
    stage = models.CharField(max_length=60, blank=True, help_text="what a running export is doing, in words")
    progress = models.FloatField(default=0.0, help_text="0 to 1 while running")
    size_bytes = models.BigIntegerField(default=0, help_text="the zip's size once ready")
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "format", "quantization"], name="job_export_unique_per_format")
        ]

    def __str__(self) -> str:
        kind = self.format + (f" {self.quantization}" if self.quantization else "")
        return f"{kind} export of {self.job_id} ({self.status})"


class JobPublish(models.Model):
    """One push of a job's adapter (or one of its exports) to a Hugging Face Hub repository, made on the
    background worker with the user's token. The token is never a field here: it waits in Redis with a short
    expiry until the upload takes it (jobs.training.publish)."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    class What(models.TextChoices):
        ADAPTER = "adapter"
        MERGED = "merged"
        GGUF_LORA = "gguf-lora"
        GGUF_MERGED = "gguf-merged"

    job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, related_name="publishes")
    repo_id = models.CharField(max_length=200)
    what = models.CharField(max_length=12, choices=What.choices, default=What.ADAPTER)
    quantization = models.CharField(max_length=8, blank=True, help_text="gguf-merged: the export's quantization")
    private = models.BooleanField(default=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    url = models.CharField(max_length=500, blank=True, help_text="the repository's address once done")
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.what} of {self.job_id} to {self.repo_id} ({self.status})"
