"""API-key authentication and per-key throttling for the REST and OpenAI-style APIs."""
from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.utils import timezone
from rest_framework import authentication, exceptions, throttling

from jobs.models import ApiKey
from jobs.services_keys import KEY_PREFIX, api_key_hash

LAST_USED_EVERY = dt.timedelta(minutes=1)


def api_key_from_header(header: str) -> str | None:
    """The key of an `Authorization: Bearer ls-...` header, or None for other schemes."""
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1]


def api_key_lookup(raw_key: str) -> ApiKey | None:
    """The live key matching raw_key. Looking up its sha256 (not the key) keeps the compare constant-time
    with respect to the secret."""
    if not raw_key.startswith(KEY_PREFIX):
        return None
    key = ApiKey.objects.select_related("owner").filter(hashed=api_key_hash(raw_key), revoked=False).first()
    if key is None or not key.owner.is_active:
        return None
    now = timezone.now()
    if key.last_used is None or now - key.last_used > LAST_USED_EVERY:
        ApiKey.objects.filter(id=key.id).update(last_used=now)
        key.last_used = now
    return key


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer ls-...`; request.auth is the ApiKey row."""

    keyword = "Bearer"

    def authenticate(self, request):
        raw = api_key_from_header(authentication.get_authorization_header(request).decode("latin-1"))
        if raw is None:
            return None
        key = api_key_lookup(raw)
        if key is None:
            raise exceptions.AuthenticationFailed("Incorrect API key provided.")
        return key.owner, key

    def authenticate_header(self, request):
        return self.keyword


class ApiKeyRateThrottle(throttling.SimpleRateThrottle):
    """Requests per API key (settings.API_THROTTLE_RATE); session requests are not limited here."""

    scope = "api_key"

    def get_rate(self):
        return getattr(settings, "API_THROTTLE_RATE", "600/min")

    def get_cache_key(self, request, view):
        if not isinstance(request.auth, ApiKey):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.auth.id}
