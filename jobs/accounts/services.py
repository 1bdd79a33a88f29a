"""Writes for accounts: personal API keys."""

from __future__ import annotations

import hashlib
import secrets

from django.db import transaction

from jobs.accounts.limits import check_limit
from jobs.accounts.models import ApiKey
from jobs.common.exceptions import ProductError

KEY_PREFIX = "ls-"


class ApiKeyError(ProductError):
    """The key cannot be changed by this user."""

    status = 403
    field = "key"


def api_key_hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_create(*, owner, name: str = "") -> tuple[ApiKey, str]:
    """A new key for owner; returns the row and the raw key, which is never stored."""
    check_limit(owner, "api_keys", used=ApiKey.objects.filter(owner=owner, revoked=False).count())
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        key = ApiKey.objects.create(
            owner=owner, name=name.strip()[:100], prefix=raw_key[:8], hashed=api_key_hash(raw_key)
        )
    return key, raw_key


def api_key_revoke(*, key: ApiKey, by) -> ApiKey:
    """Revoke a key for good; requests with it fail from now on."""
    if key.owner_id != by.id:
        raise ApiKeyError("not your key")
    ApiKey.objects.filter(id=key.id).update(revoked=True)
    key.revoked = True
    return key
