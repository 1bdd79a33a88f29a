"""Database rows. Primary keys of user-facing objects are random UUIDs (opaque, not guessable)."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class BaseModel(models.Model):
    """A base language model available on local disk."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, unique=True)
    path = models.CharField(max_length=500)
    architecture = models.CharField(max_length=100, blank=True)
    parameters = models.BigIntegerField(default=0)
    linear_modules = models.JSONField(default=list)
    has_chat_template = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Dataset(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=200)
    original_name = models.CharField(max_length=255, blank=True, help_text="the uploaded file's name, for display")
    file = models.CharField(max_length=300, help_text="the original file under MEDIA_ROOT, named by an opaque id")
    normalized_file = models.CharField(max_length=300, blank=True,
                                       help_text="the examples as normalised JSONL (messages or text per line)")
    format = models.CharField(max_length=20)
    schema = models.CharField(max_length=30)
    mapping = models.JSONField(default=dict, blank=True, help_text="column mapping when no schema matched")
    rows = models.PositiveIntegerField()
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    stats = models.JSONField(default=dict)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.name


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class FineTuneJob(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    name = models.CharField(max_length=200, blank=True)
    dataset = models.ForeignKey(Dataset, on_delete=models.SET_NULL, null=True, related_name="jobs")
    dataset_name = models.CharField(max_length=200, blank=True, help_text="kept if the dataset is deleted later")
    dataset_sha256 = models.CharField(max_length=64, blank=True)
    validation = models.JSONField(default=dict, blank=True,
                                  help_text="how the validation split was made: kind, percent, seed, rows")
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="jobs")
    config = models.JSONField(help_text="a worker.config.TrainConfig as a dict")
    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    stop_requested = models.CharField(max_length=10, blank=True, help_text="cancel or pause, set by the web")
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    final_loss = models.FloatField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.name or f"job {self.id}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def short_id(self) -> str:
        return str(self.id)[:8]


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
        ordering = ["step"]
        constraints = [models.UniqueConstraint(fields=["job", "step"], name="unique_metric_step")]

    def as_event(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "loss": self.train_loss, "eval_loss": self.eval_loss,
                "lr": self.lr, "tokens_per_s": self.tokens_per_s, **self.extra}


class JobEvent(models.Model):
    """Human-readable messages from a job's life (setup, resume, errors)."""

    job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=30)
    message = models.TextField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


class Adapter(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.OneToOneField(FineTuneJob, on_delete=models.CASCADE, related_name="adapter")
    folder = models.CharField(max_length=300, help_text="adapter folder under MEDIA_ROOT")
    zip_file = models.CharField(max_length=300, help_text="zip under MEDIA_ROOT")
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    created = models.DateTimeField(auto_now_add=True)


class ChatSession(models.Model):
    """One comparison: the same prompts to two or three models on one base (the base alone and/or
    finished adapters); `job` is the job whose page started it (or the API completion's model)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chats")
    job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, null=True, blank=True, related_name="chats")
    base_model = models.ForeignKey(BaseModel, on_delete=models.CASCADE, null=True, blank=True, related_name="chats",
                                   help_text="for API completions of a base model alone (no job)")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]


class ChatRound(models.Model):
    """One prompt sent at once to every model of a comparison: the unit a vote is cast on.
    In a blind round the models' screen order was shuffled and is hidden until the vote."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="rounds")
    blind = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created"]


class ChatAnswer(models.Model):
    class Side(models.TextChoices):
        BASE = "base"
        ADAPTER = "adapter"

    class State(models.TextChoices):
        PENDING = "pending"
        STREAMING = "streaming"
        DONE = "done"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="answers")
    side = models.CharField(max_length=10, choices=Side.choices, help_text="base when job is empty, else adapter")
    job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, null=True, blank=True, related_name="chat_answers",
                            help_text="the job whose adapter answered; empty: the base model alone")
    round = models.ForeignKey(ChatRound, on_delete=models.CASCADE, null=True, blank=True, related_name="answers",
                              help_text="the comparison round (none for an API completion)")
    position = models.PositiveSmallIntegerField(default=0, help_text="screen column in its round, 0 = left")
    prompt = models.TextField()
    settings = models.JSONField(default=dict)
    text = models.TextField(blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    stopped = models.BooleanField(default=False, help_text="ended early by the stop button; text is what came before")
    error = models.TextField(blank=True)
    messages = models.JSONField(null=True, blank=True,
                                help_text="the full message history of an API completion (else built from the session)")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "side"]


class Vote(models.Model):
    """The owner's verdict on one two-model round, stored against the two models, never the screen
    sides: `first_job` / `second_job` in canonical order (the base model alone, empty, first; then
    adapters by job id) whatever order the screen showed them in."""

    class Result(models.TextChoices):
        FIRST = "first", "first model better"
        SECOND = "second", "second model better"
        TIE = "tie"
        BOTH_BAD = "both_bad", "both bad"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="votes")
    round = models.OneToOneField(ChatRound, on_delete=models.CASCADE, related_name="vote",
                                 help_text="one vote per round")
    base_model = models.ForeignKey(BaseModel, on_delete=models.CASCADE, related_name="votes")
    first_job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, null=True, blank=True,
                                  related_name="votes_as_first", help_text="empty: the base model alone")
    second_job = models.ForeignKey(FineTuneJob, on_delete=models.CASCADE, related_name="votes_as_second")
    result = models.CharField(max_length=10, choices=Result.choices)
    blind = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]


class ApiKey(models.Model):
    """A personal API key. Only its sha256 is stored; the key itself is shown once at creation."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=8, help_text="the key's first 8 characters, to recognise it")
    hashed = models.CharField(max_length=64, unique=True, help_text="sha256 hex of the full key")
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name or 'key'} ({self.prefix}...)"


def webhook_secret_new() -> str:
    """A signing secret in Standard Webhooks form: `whsec_` and base64 of 32 random bytes."""
    import base64
    import secrets

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Webhook(models.Model):
    """An owner's HTTPS endpoint told when their jobs end; deliveries are signed with `secret`."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=100, default=webhook_secret_new)
    active = models.BooleanField(default=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.url


class WebhookDelivery(models.Model):
    """One event sent (or being retried) to one webhook."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=60)
    payload = models.JSONField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    delivered = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created"]
