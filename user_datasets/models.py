from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Dataset(models.Model):
    """An uploaded file that passed every check, with its examples as normalised JSONL beside it."""

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
        db_table = "jobs_dataset"  # the table of the single app this project once had (see legacy_schema)
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.name
