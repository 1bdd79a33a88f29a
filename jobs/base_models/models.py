from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from jobs.common.blobs import model_local_path


class ModelSource(models.TextChoices):
    FOLDER = "folder", "local folder"
    HUB = "hub", "Hugging Face Hub"
    GGUF = "gguf", "GGUF upload"


class ModelStatus(models.TextChoices):
    QUEUED = "queued"
    DOWNLOADING = "downloading"
    CONVERTING = "converting"
    READY = "ready"
    FAILED = "failed"


class BaseModel(models.Model):
    """A base language model: a local folder, or a folder in the object store (s3://BUCKET/PREFIX) that
    each machine downloads into its model cache on first use. Shared with every user when `owner` is
    empty (added by staff), else private to its owner. Models from the Hub or a GGUF upload are made by a
    background worker and are usable once `status` is ready."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, help_text="unique among its owner's models (or among the shared ones)")
    path = models.CharField(max_length=500)
    architecture = models.CharField(max_length=100, blank=True)
    parameters = models.BigIntegerField(default=0)
    linear_modules = models.JSONField(default=list)
    has_chat_template = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="base_models",
        help_text="empty: shared with every user",
    )
    source = models.CharField(max_length=10, choices=ModelSource.choices, default=ModelSource.FOLDER)
    status = models.CharField(max_length=12, choices=ModelStatus.choices, default=ModelStatus.READY)
    error = models.TextField(blank=True)
    context_length = models.IntegerField(default=0)
    hub_id = models.CharField(max_length=200, blank=True)
    hub_revision = models.CharField(max_length=200, blank=True)
    # A download's Hub token is never stored here: see hub_tokens (Redis, with an expiry).
    bytes_total = models.BigIntegerField(default=0)
    bytes_done = models.BigIntegerField(default=0)
    stored_bytes = models.BigIntegerField(
        null=True, blank=True, help_text="bytes this product stores for the model (a user's own counts to their quota)"
    )
    # How many times the background work (a GGUF conversion) was started: a task redelivered after its worker
    # died counts, and past GGUF_CONVERT_ATTEMPTS the model fails for good instead of being tried again.
    attempts = models.IntegerField(default=0)

    class Meta:
        db_table = "jobs_basemodel"  # the table of the single app this project once had (see legacy_schema)
        ordering = ["name"]
        # Unique per owner, not across users: a global rule would tell one user another's private names and
        # let them take a name first. Shared models (no owner) are unique among themselves.
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="base_model_name_unique_per_owner"),
            models.UniqueConstraint(
                fields=["name"], condition=models.Q(owner__isnull=True), name="base_model_name_unique_shared"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def shared(self) -> bool:
        return self.owner_id is None

    @property
    def local_path(self) -> str:
        """The folder to load the model from on this machine (downloading a stored model once)."""
        return model_local_path(self.path)
