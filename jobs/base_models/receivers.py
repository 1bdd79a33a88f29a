"""What the model catalogue reports to other domains (connected in BaseModelsConfig.ready)."""

from __future__ import annotations

from django.dispatch import receiver

from jobs.accounts.limits import usage_reported
from jobs.base_models.models import BaseModel, ModelStatus
from jobs.base_models.services import model_relative
from jobs.common import blobs

SETTLED = (ModelStatus.READY, ModelStatus.FAILED)


@receiver(usage_reported, dispatch_uid="base-models-usage")
def report_usage(sender, user, **kwargs):
    """Bytes stored for the user's own models: as recorded once made; measured from the store while one is
    being downloaded or converted (its upload or the files so far), and once for a row of an older release."""
    total = 0
    for model in BaseModel.objects.filter(owner=user).only("id", "status", "stored_bytes"):
        if model.stored_bytes is not None:
            total += model.stored_bytes
            continue
        stored = blobs.stored_bytes(model_relative(model))
        if model.status in SETTLED:
            BaseModel.objects.filter(id=model.id).update(stored_bytes=stored)
        total += stored
    return {"storage_bytes": total}
