"""Live events over Redis pub/sub, and the server-sent-event streams that follow them.

Publishing is synchronous (called from workers and services). Following is async (redis.asyncio),
so an open dashboard holds no thread. Each stream first subscribes, then replays what the
database already has, then follows the channel, skipping anything already sent: a reload or a
late tab never misses a point and never sees one twice.
"""
from __future__ import annotations

import json
import logging
import time
from functools import lru_cache
from typing import Any, AsyncIterator, Awaitable, Callable

import redis
import redis.asyncio as aioredis
from django.conf import settings

log = logging.getLogger(__name__)
KEEPALIVE_SECONDS = 15


def job_channel(job_id) -> str:
    return f"job:{job_id}"


def chat_channel(session_id) -> str:
    return f"chat:{session_id}"


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def publish(channel: str, kind: str, data: dict[str, Any]) -> None:
    """Best effort: the database is the record, Redis only carries it live."""
    try:
        _client().publish(channel, json.dumps({"kind": kind, "data": data}))
    except redis.RedisError as exc:
        log.warning("could not publish %s on %s: %s", kind, channel, exc)


STOP_TTL_SECONDS = 3600


def _stop_key(session_id) -> str:
    return f"chat-stop:{session_id}"


def chat_stop_request(session_id) -> None:
    """Ask the infer workers to stop every answer of this chat created until now (the stop button)."""
    try:
        _client().set(_stop_key(session_id), repr(time.time()), ex=STOP_TTL_SECONDS)
    except redis.RedisError as exc:
        log.warning("could not request a stop of chat %s: %s", session_id, exc)


def chat_stop_time(session_id) -> float | None:
    """When a stop of this chat was last asked for (epoch seconds), or None."""
    try:
        value = _client().get(_stop_key(session_id))
    except redis.RedisError:
        return None
    return float(value) if value else None


def sse(kind: str, data: dict[str, Any], event_id: int | str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n"


async def follow(channel: str, replay: Callable[[], Awaitable[list[tuple[str, dict, Any]]]],
                 on_message: Callable[[str, dict], tuple[list[str], bool]]) -> AsyncIterator[str]:
    """Subscribe, replay stored events, then follow live ones until on_message says stop.

    `replay()` returns (kind, data, id) triples and is awaited after subscribing.
    `on_message(kind, data)` returns (SSE chunks to send, finished?).
    """
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel)
        yield ": connected\n\n"
        for kind, data, event_id in await replay():
            chunks, done = on_message(kind, data)
            for chunk in chunks:
                yield chunk
            if done:
                return
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=KEEPALIVE_SECONDS)
            if message is None:
                yield ": keepalive\n\n"
                continue
            payload = json.loads(message["data"])
            chunks, done = on_message(payload["kind"], payload["data"])
            for chunk in chunks:
                yield chunk
            if done:
                return
    finally:
        await pubsub.aclose()
        await client.aclose()
