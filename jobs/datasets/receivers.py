"""What datasets report to other domains (connected in UserDatasetsConfig.ready)."""

from __future__ import annotations

from django.db.models import Sum
from django.dispatch import receiver

from jobs.accounts.limits import usage_reported
from jobs.datasets.models import Dataset


@receiver(usage_reported, dispatch_uid="user-datasets-usage")
def report_usage(sender, user, **kwargs):
    """Bytes of the user's uploaded files."""
    return {"storage_bytes": Dataset.objects.filter(owner=user).aggregate(total=Sum("size_bytes"))["total"] or 0}
