"""Reads of the catalogue: base models are shared by every user."""
from __future__ import annotations

from django.db.models import QuerySet

from base_models.models import BaseModel
from common.ids import is_uuid


def base_model_list() -> QuerySet[BaseModel]:
    return BaseModel.objects.all()


def base_model_find(model_id) -> BaseModel | None:
    """The base model with this id, or None (also for a value that is not an id)."""
    return base_model_list().filter(id=model_id).first() if is_uuid(model_id) else None
