"""Bearer API-key authentication, written once: the REST and OpenAI-style APIs (through DRF), and the
async views (live streams, chat completions) all use `bearer_key`; plus throttling per key and per
signed-in browser user, counted in the shared cache (Redis) so a limit holds across processes."""

from __future__ import annotations

import datetime as dt
import logging
import types

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone
from rest_framework import authentication, exceptions, throttling

from jobs.accounts.models import ApiKey
from jobs.accounts.services import KEY_PREFIX, api_key_hash

log = logging.getLogger(__name__)
LAST_USED_EVERY = dt.timedelta(minutes=1)


class InvalidApiKey(Exception):
    """A Bearer header whose key is unknown, revoked or of an inactive user."""

    def __init__(self, raw_key: str):
        super().__init__("Incorrect API key provided.")
        self.raw_key = raw_key


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


def bearer_key(authorization: str) -> ApiKey | None:
    """The API key of an Authorization header; None when there is no Bearer header; InvalidApiKey
    when there is one and its key does not work."""
    raw = api_key_from_header(authorization)
    if raw is None:
        return None
    key = api_key_lookup(raw)
    if key is None:
        raise InvalidApiKey(raw)
    return key


async def request_user(request):
    """For async views: the owner of a valid Bearer key, else the signed-in user, else None."""
    try:
        key = await sync_to_async(bearer_key)(request.headers.get("Authorization", ""))
    except InvalidApiKey:
        return None
    if key is not None:
        return key.owner
    user = await request.auser()
    return user if user.is_authenticated else None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer ls-...`; request.auth is the ApiKey row."""

    keyword = "Bearer"

    def authenticate(self, request):
        try:
            key = bearer_key(authentication.get_authorization_header(request).decode("latin-1"))
        except InvalidApiKey:
            raise exceptions.AuthenticationFailed("Incorrect API key provided.") from None
        return None if key is None else (key.owner, key)

    def authenticate_header(self, request):
        return self.keyword


class FailOpenThrottle(throttling.SimpleRateThrottle):
    """A rate throttle whose counts live in Redis: while Redis is unreachable (a restart), requests are
    let through and logged rather than failing every API call with a 500."""

    def allow_request(self, request, view):
        try:
            return super().allow_request(request, view)
        except (redis.RedisError, OSError) as exc:
            log.warning("throttle counts unavailable (%s); letting the request through", exc)
            return True


class ApiKeyRateThrottle(FailOpenThrottle):
    """Requests per API key (settings.API_THROTTLE_RATE); session requests are not limited here."""

    scope = "api_key"

    def get_rate(self):
        return getattr(settings, "API_THROTTLE_RATE", "600/min")

    def get_cache_key(self, request, view):
        if not isinstance(request.auth, ApiKey):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.auth.id}


class SessionUserRateThrottle(FailOpenThrottle):
    """Requests per signed-in user without an API key (settings.SESSION_THROTTLE_RATE): the browser's
    calls to /api/v1/, or a script driving a session cookie."""

    scope = "session_user"

    def get_rate(self):
        return getattr(settings, "SESSION_THROTTLE_RATE", "1200/min")

    def get_cache_key(self, request, view):
        if isinstance(request.auth, ApiKey) or not request.user.is_authenticated:
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}


def throttle_wait(key: ApiKey) -> float | None:
    """For views outside DRF: None if this request of `key` is allowed, else the seconds to wait."""
    throttle = ApiKeyRateThrottle()
    if throttle.allow_request(types.SimpleNamespace(auth=key), None):
        return None
    return throttle.wait() or 1
