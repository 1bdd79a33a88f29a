"""Celery tasks of the background queue: download a base model from the Hub, convert an uploaded GGUF.
Both take the model's id and re-read the row; a task redelivered after its worker died continues the
work (a download resumes its partial files)."""

from __future__ import annotations

from celery import shared_task

from jobs.base_models import services
from jobs.base_models.models import BaseModel
from jobs.common import queue
from jobs.common.shares import EXPORTS, owner_share


def _owner_of(model_id: str) -> int | None:
    """The model's owner (None for a shared model, or a deleted one): whose share of exports it takes."""
    return BaseModel.objects.filter(id=model_id).values_list("owner_id", flat=True).first()


@shared_task(name=queue.HUB_DOWNLOAD, acks_late=True)
def hub_download(model_id: str) -> None:
    with owner_share(EXPORTS, _owner_of(model_id)):
        services.base_model_download(model_id=model_id)


@shared_task(name=queue.GGUF_CONVERT, acks_late=True)
def gguf_convert(model_id: str) -> None:
    with owner_share(EXPORTS, _owner_of(model_id)):
        services.base_model_convert_gguf(model_id=model_id)
