"""Reads for accounts; each takes the owner."""

from __future__ import annotations

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from jobs.accounts.models import ApiKey


def api_key_list(*, owner) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(owner=owner)


def api_key_get(*, owner, key_id) -> ApiKey:
    """The owner's key, or Http404."""
    return get_object_or_404(api_key_list(owner=owner), id=key_id)
