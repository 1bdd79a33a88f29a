"""What datasets report to other domains (connected in UserDatasetsConfig.ready)."""

from __future__ import annotations

from django.db.models import Sum
from django.dispatch import receiver

from jobs.accounts.limits import usage_reported
from jobs.common import blobs
from jobs.datasets.models import Dataset, TokenProfile, UploadCheck

PENDING_UPLOADS = [UploadCheck.Status.QUEUED, UploadCheck.Status.CHECKING, UploadCheck.Status.NEEDS_MAPPING]


def measure_unmeasured(*, owner) -> None:
    """Rows stored before their size was recorded (an older release) get it from the store, once."""
    for dataset in Dataset.objects.filter(owner=owner, stored_bytes__isnull=True).only("file", "normalized_file"):
        stored = blobs.stored_bytes(dataset.file, dataset.normalized_file)
        Dataset.objects.filter(id=dataset.id).update(stored_bytes=stored)
    unmeasured = TokenProfile.objects.filter(dataset__owner=owner, stored_bytes__isnull=True).exclude(file="")
    for profile in unmeasured.only("file"):
        TokenProfile.objects.filter(id=profile.id).update(stored_bytes=blobs.stored_bytes(profile.file))


@receiver(usage_reported, dispatch_uid="user-datasets-usage")
def report_usage(sender, user, **kwargs):
    """Bytes stored for the user's datasets (the original and the normalised file), their token counts, and
    the uploads still waiting for their check or their column mapping."""
    measure_unmeasured(owner=user)
    datasets = Dataset.objects.filter(owner=user).aggregate(total=Sum("stored_bytes"))["total"] or 0
    profiles = TokenProfile.objects.filter(dataset__owner=user).aggregate(total=Sum("stored_bytes"))["total"] or 0
    pending = UploadCheck.objects.filter(owner=user, status__in=PENDING_UPLOADS).exclude(file="")
    uploads = pending.aggregate(total=Sum("size_bytes"))["total"] or 0
    return {"storage_bytes": datasets + profiles + uploads}
