from __future__ import annotations

import uuid

from django.db import models

from common.blobs import model_local_path


class BaseModel(models.Model):
    """A base language model: a local folder, or a folder in the object store (s3://BUCKET/PREFIX) that
    each machine downloads into its model cache on first use."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, unique=True)
    path = models.CharField(max_length=500)
    architecture = models.CharField(max_length=100, blank=True)
    parameters = models.BigIntegerField(default=0)
    linear_modules = models.JSONField(default=list)
    has_chat_template = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "jobs_basemodel"  # the table of the single app this project once had (see legacy_schema)
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def local_path(self) -> str:
        """The folder to load the model from on this machine (downloading a stored model once)."""
        return model_local_path(self.path)
