"""Live events over Redis pub/sub, and the server-sent-event streams that follow them.

Publishing is synchronous (called from workers and services). Following is async (redis.asyncio),
so an open dashboard holds no thread. Each stream first subscribes, then replays what the
database already has, then follows the channel, skipping anything already sent: a reload or a
late tab never misses a point and never sees one twice.
"""
from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any, AsyncIterator, Awaitable, Callable

import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.http import StreamingHttpResponse

log = logging.getLogger(__name__)
KEEPALIVE_SECONDS = 15


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    """This process's connection pool to the broker's Redis (live events, stop flags)."""
    return redis.Redis.from_url(settings.REDIS_URL)


def publish(channel: str, kind: str, data: dict[str, Any]) -> None:
    """Best effort: the database is the record, Redis only carries it live."""
    try:
        redis_client().publish(channel, json.dumps({"kind": kind, "data": data}))
    except redis.RedisError as exc:
        log.warning("could not publish %s on %s: %s", kind, channel, exc)


def sse(kind: str, data: dict[str, Any], event_id: int | str | None = None) -> str:
    """One server-sent event, with an id when the client may resume after it (Last-Event-ID)."""
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


def event_stream(chunks: AsyncIterator[str]) -> StreamingHttpResponse:
    """A server-sent-event response that no proxy buffers or caches."""
    response = StreamingHttpResponse(chunks, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
