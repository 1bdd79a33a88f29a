"""A Hub token given for a download lives only in Redis, under the model's id with an expiry, until the download
ends: never in the database (whose backups and admin pages outlive the download), never in a task message, never
shown. A download whose token expired (or was lost with Redis) goes on without one: a gated model then fails
with the Hub's "access denied" and the user adds it again."""

from __future__ import annotations

import logging

import redis
from django.conf import settings

from jobs.common.events import redis_client
from jobs.common.exceptions import ProductError

log = logging.getLogger(__name__)


def _key(model_id) -> str:
    return f"hub-token:{model_id}"


def hub_token_keep(model_id, token: str, *, key: str = "", seconds: int = 0) -> None:
    """Keep `token` for the model's download (HUB_TOKEN_SECONDS at most), or under `key` for `seconds`; refused
    when Redis cannot take it."""
    try:
        redis_client().set(key or _key(model_id), token, ex=seconds or settings.HUB_TOKEN_SECONDS)
    except redis.RedisError as exc:
        log.warning("could not keep the Hub token of %s: %s", key or model_id, exc)
        raise ProductError(
            "the token cannot be kept for the work right now; try again in a minute", field="token"
        ) from None


def hub_token_take(key: str) -> str:
    """The token kept under `key`, deleted as it is read; "" when none is there (expired, or Redis lost it)."""
    try:
        value = redis_client().getdel(key)
    except redis.RedisError as exc:
        log.warning("could not take the Hub token %s: %s", key, exc)
        return ""
    return value.decode() if isinstance(value, bytes) else (value or "")


def hub_token_of(model_id) -> str:
    """The model's download token, or "" (none given, expired, or Redis unreachable)."""
    try:
        value = redis_client().get(_key(model_id))
    except redis.RedisError as exc:
        log.warning("could not read the Hub token of %s: %s", model_id, exc)
        return ""
    if isinstance(value, bytes):
        return value.decode()
    return value or ""


def hub_token_forget(model_id) -> None:
    try:
        redis_client().delete(_key(model_id))
    except redis.RedisError as exc:  # it expires on its own
        log.warning("could not forget the Hub token of %s: %s", model_id, exc)
