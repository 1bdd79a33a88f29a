"""A user's personal API keys (the users themselves are Django's auth users)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


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
        db_table = "jobs_apikey"  # the table of the single app this project once had (see legacy_schema)
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name or 'key'} ({self.prefix}...)"


class Quota(models.Model):
    """One user's limits where they differ from the installation's defaults (settings QUOTA_*);
    an empty field means the default. Set in the admin."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota")
    active_jobs = models.PositiveIntegerField(null=True, blank=True, help_text="queued + running + paused jobs")
    running_jobs = models.PositiveIntegerField(null=True, blank=True, help_text="jobs training at once")
    compute_seconds_per_day = models.PositiveIntegerField(
        null=True, blank=True, help_text="training time per UTC day, in seconds"
    )
    storage_bytes = models.BigIntegerField(
        null=True, blank=True, help_text="datasets, uploads, job files and own models, as stored"
    )
    api_keys = models.PositiveIntegerField(null=True, blank=True, help_text="live (unrevoked) API keys")
    webhooks = models.PositiveIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return f"quota of {self.user}"
