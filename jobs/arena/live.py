"""A chat's live channel on Redis (answer pieces as they are generated) and its stop flag, which
the infer worker reads between tokens."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from jobs.common import events

log = logging.getLogger(__name__)
STOP_TTL_SECONDS = 3600


def chat_channel(session_id) -> str:
    return f"chat:{session_id}"


def publish_chat(session_id, kind: str, data: dict[str, Any]) -> None:
    events.publish(chat_channel(session_id), kind, data)


def _stop_key(session_id) -> str:
    return f"chat-stop:{session_id}"


def chat_stop_request(session_id) -> None:
    """Ask the infer workers to stop every answer of this chat created until now (the stop button)."""
    try:
        events.redis_client().set(_stop_key(session_id), repr(time.time()), ex=STOP_TTL_SECONDS)
    except redis.RedisError as exc:
        log.warning("could not request a stop of chat %s: %s", session_id, exc)


def chat_stop_time(session_id) -> float | None:
    """When a stop of this chat was last asked for (epoch seconds), or None."""
    try:
        value = events.redis_client().get(_stop_key(session_id))
    except redis.RedisError:
        return None
    return float(value) if value else None
