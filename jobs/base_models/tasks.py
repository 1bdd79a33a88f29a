"""Celery tasks of the background queue: download a base model from the Hub, convert an uploaded GGUF.
Both take the model's id and re-read the row; a task redelivered after its worker died continues the
work (a download resumes its partial files)."""

from __future__ import annotations

from celery import shared_task

from jobs.base_models import services
from jobs.common import queue


@shared_task(name=queue.HUB_DOWNLOAD, acks_late=True)
def hub_download(model_id: str) -> None:
    services.base_model_download(model_id=model_id)


@shared_task(name=queue.GGUF_CONVERT, acks_late=True)
def gguf_convert(model_id: str) -> None:
    services.base_model_convert_gguf(model_id=model_id)
