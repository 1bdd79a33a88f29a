"""Reads of the catalogue. Shared models (no owner) are visible to every user; a private model only to its
owner. Without an owner a selector sees the shared models only, so a forgotten owner hides, never leaks."""

from __future__ import annotations

from django.db.models import F, Q, QuerySet
from django.http import Http404

from jobs.base_models.models import BaseModel, ModelStatus
from jobs.common.ids import is_uuid


def base_model_list(*, owner=None, ready_only: bool = True) -> QuerySet[BaseModel]:
    """The models `owner` may use (shared ones and their own); only finished ones unless `ready_only` is off."""
    visible = Q(owner__isnull=True) if owner is None else Q(owner__isnull=True) | Q(owner=owner)
    qs = BaseModel.objects.filter(visible)
    return qs.filter(status=ModelStatus.READY) if ready_only else qs


def base_model_named(*, owner, name: str) -> BaseModel | None:
    """The ready model called `name` that `owner` may use: their own before a shared one of the same name."""
    return base_model_list(owner=owner).filter(name=name).order_by(F("owner").asc(nulls_last=True)).first()


def base_model_find(model_id, *, owner=None) -> BaseModel | None:
    """The ready base model with this id that `owner` may use, or None (also for a value that is not an id)."""
    return base_model_list(owner=owner).filter(id=model_id).first() if is_uuid(model_id) else None


def base_model_get(*, owner, model_id) -> BaseModel:
    """A model `owner` may see, in any status; 404 alike for a missing and another user's private model."""
    model = base_model_list(owner=owner, ready_only=False).filter(id=model_id).first() if is_uuid(model_id) else None
    if model is None:
        raise Http404("no such base model")
    return model


def jobs_using(*, owner, model: BaseModel):
    """`owner`'s fine-tuning jobs on `model` (other users' jobs are only counted)."""
    return model.jobs.filter(owner=owner).order_by("-created")
