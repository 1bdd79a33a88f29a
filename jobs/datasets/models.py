from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from worker.data.schemas import SCHEMA_LABELS

# What a dataset holds, in plain words, by its detected schema (the schema itself is the technical hint).
KIND_LABELS = {**SCHEMA_LABELS, "mapped": "Examples (mapped columns)"}
# Below these counts a job barely changes the model: the pages warn before a job starts (never refuse).
USEFUL_PAIRS = 20
USEFUL_EXAMPLES = 50
USEFUL_PROMPTS = 20  # reinforcement: each prompt is answered several times a step


class Dataset(models.Model):
    """An uploaded file that passed every check, with its examples as normalised JSONL beside it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=200)
    original_name = models.CharField(max_length=255, blank=True, help_text="the uploaded file's name, for display")
    file = models.CharField(max_length=300, help_text="the original file under MEDIA_ROOT, named by an opaque id")
    normalized_file = models.CharField(
        max_length=300, blank=True, help_text="the examples as normalised JSONL (messages or text per line)"
    )
    format = models.CharField(max_length=20)
    schema = models.CharField(max_length=30)
    mapping = models.JSONField(default=dict, blank=True, help_text="column mapping when no schema matched")
    rows = models.PositiveIntegerField()
    size_bytes = models.BigIntegerField(help_text="the uploaded file's size, as the user sent it")
    stored_bytes = models.BigIntegerField(
        null=True, blank=True, help_text="what the quota charges: the original and the normalised file as stored"
    )
    sha256 = models.CharField(max_length=64)
    stats = models.JSONField(default=dict)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "jobs_dataset"  # the table of the single app this project once had (see legacy_schema)
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.name

    @property
    def holds_pairs(self) -> bool:
        """Preference pairs (prompt, chosen, rejected): data for DPO / ORPO, not for supervised tuning."""
        return self.schema == "preference"

    @property
    def holds_prompts(self) -> bool:
        """Prompts to reward (messages ending with a user turn, plus fields the graders read): reinforcement data."""
        return self.schema == "prompts"

    @property
    def data_method(self) -> str:
        """The method this data trains with by default: dpo for pairs, reinforcement for prompts, else supervised."""
        return "dpo" if self.holds_pairs else "reinforcement" if self.holds_prompts else "supervised"

    @property
    def kind_label(self) -> str:
        """What the dataset holds, in plain words ("Chat examples", "Preference pairs")."""
        return KIND_LABELS.get(self.schema, "Examples")

    @property
    def row_noun(self) -> str:
        """What one row is, in plain words: "preference pair", "prompt" or "example"."""
        return "preference pair" if self.holds_pairs else "prompt" if self.holds_prompts else "example"

    def rows_in_words(self) -> str:
        """The row count with its noun: "1 prompt", "12 examples"."""
        return f"{self.rows} {self.row_noun}{'' if self.rows == 1 else 's'}"

    @property
    def size_warning(self) -> str:
        """A warning when the dataset is too small for a job to change the model much, else ""."""
        useful = USEFUL_PAIRS if self.holds_pairs else USEFUL_PROMPTS if self.holds_prompts else USEFUL_EXAMPLES
        if self.rows >= useful:
            return ""
        return f"Only {self.rows_in_words()}: the model will barely change; {useful} or more is a useful start."


class TokenProfile(models.Model):
    """A dataset's token lengths and trained spans under one tokenizer (worker.data.report.TokenProfile),
    computed once by a background task and stored as JSON; every max-length view and estimate reads it."""

    class Status(models.TextChoices):
        PENDING = "pending"
        READY = "ready"
        FAILED = "failed"

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="token_profiles")
    tokenizer_key = models.CharField(max_length=64, help_text="worker.modeling.tokenizer_fingerprint of the model")
    model_path = models.CharField(max_length=500, help_text="the base model folder whose tokenizer counts")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    file = models.CharField(max_length=300, blank=True)
    stored_bytes = models.BigIntegerField(null=True, blank=True, help_text="the file's size as stored, for the quota")
    error = models.CharField(max_length=500, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["dataset", "tokenizer_key"], name="one_profile_per_tokenizer")]


class UploadCheck(models.Model):
    """An uploaded file stored under an opaque name and waiting for (or under) its check in a background
    worker, or for its column mapping (small and large uploads alike: the row's id is the upload token); on
    success it becomes a Dataset. A small file whose schema is known is checked during the request, without one."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        CHECKING = "checking"
        READY = "ready"
        FAILED = "failed"
        NEEDS_MAPPING = "needs_mapping"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="upload_checks")
    filename = models.CharField(max_length=255)
    name = models.CharField(max_length=200, blank=True)
    drop_duplicates = models.BooleanField(default=False)
    mapping = models.JSONField(default=dict, blank=True)
    file = models.CharField(max_length=300, help_text="the stored upload under MEDIA_ROOT while it waits")
    size_bytes = models.BigIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    stage = models.CharField(max_length=100, blank=True)
    rows = models.PositiveIntegerField(default=0)
    problems = models.JSONField(default=list, blank=True)
    problem_total = models.PositiveIntegerField(default=0)
    columns = models.JSONField(default=list, blank=True)
    column_samples = models.JSONField(
        default=dict, blank=True, help_text="a few short values per column, shown on the mapping step"
    )
    dataset = models.ForeignKey(Dataset, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    attempts = models.PositiveSmallIntegerField(default=0, help_text="checks started (a lost one is retried)")
    started = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created"]

    @property
    def done(self) -> bool:
        return self.status in (self.Status.READY, self.Status.FAILED, self.Status.NEEDS_MAPPING)
