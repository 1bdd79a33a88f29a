"""A sweep and its trials. The rows are the study: Optuna's in-memory study is rebuilt from them for every
decision (jobs.sweeps.study), so any process decides and a restart loses nothing. Each trial is an ordinary job."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from jobs.base_models.models import BaseModel
from jobs.datasets.models import Dataset
from jobs.training.models import FineTuneJob


class SweepStatus(models.TextChoices):
    RUNNING = "running"  # trials are created as workers free up
    PAUSED = "paused"  # no new trial; the running ones pause too and resume with the sweep
    SUCCEEDED = "succeeded"  # every trial ended, one at least with a metric
    FAILED = "failed"  # every trial ended, none with a metric
    CANCELLED = "cancelled"


SWEEP_TERMINAL = (SweepStatus.SUCCEEDED, SweepStatus.FAILED, SweepStatus.CANCELLED)


class Sweep(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sweeps")
    name = models.CharField(max_length=200, blank=True)
    dataset = models.ForeignKey(Dataset, on_delete=models.SET_NULL, null=True, related_name="sweeps")
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="sweeps")
    space = models.JSONField(help_text="setting -> Optuna distribution (its JSON form)")
    fixed = models.JSONField(default=dict, blank=True, help_text="the settings every trial shares (TrainConfig)")
    validation = models.JSONField(default=dict, help_text="kind (split or dataset), percent, seed, dataset")
    metric = models.CharField(max_length=100, default="eval_loss")
    direction = models.CharField(max_length=8, default="minimize")
    sampler = models.CharField(max_length=20, default="tpe")
    pruner = models.CharField(max_length=20, default="successive_halving")
    seed = models.PositiveIntegerField(default=0)
    trials = models.PositiveIntegerField(help_text="how many trials at most")
    minutes = models.PositiveIntegerField(null=True, blank=True, help_text="no new trial after this many minutes")
    parallelism = models.PositiveIntegerField(default=2, help_text="trials queued or running at once, at most")
    status = models.CharField(max_length=12, choices=SweepStatus.choices, default=SweepStatus.RUNNING, db_index=True)
    waiting = models.CharField(max_length=300, blank=True, help_text="why no new trial starts now (a quota), or ''")
    result = models.ForeignKey(
        FineTuneJob, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", help_text="promoted trial"
    )
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.name or f"sweep {self.id}"

    @property
    def short_id(self) -> str:
        return str(self.id)[:8]

    @property
    def is_terminal(self) -> bool:
        return self.status in SWEEP_TERMINAL


class SweepTrial(models.Model):
    """One trial: its number in the study (unique per sweep, so two processes never create the same one), the
    settings Optuna chose, its job, and what the study needs back: state, value, the pruner's rungs."""

    class State(models.TextChoices):
        RUNNING = "running"  # its job is queued, running or paused
        COMPLETE = "complete"
        PRUNED = "pruned"
        FAILED = "failed"  # the job failed or was cancelled, or could not be created

    sweep = models.ForeignKey(Sweep, on_delete=models.CASCADE, related_name="trial_rows")
    number = models.PositiveIntegerField()
    params = models.JSONField()
    job = models.OneToOneField(
        FineTuneJob, on_delete=models.SET_NULL, null=True, blank=True, related_name="sweep_trial"
    )
    state = models.CharField(max_length=10, choices=State.choices, default=State.RUNNING)
    value = models.FloatField(null=True, blank=True, help_text="the metric at the end (pruned: at its last step)")
    system_attrs = models.JSONField(default=dict, blank=True, help_text="what the pruner keeps (its rungs)")
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["number"]
        constraints = [models.UniqueConstraint(fields=["sweep", "number"], name="sweep_trial_number_unique")]

    def __str__(self) -> str:
        return f"trial {self.number} of {self.sweep_id}"
