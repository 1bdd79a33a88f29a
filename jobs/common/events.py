"""Live events over Redis pub/sub, and the server-sent-event streams that follow them.

Publishing is synchronous (called from workers and services). Following is async (redis.asyncio),
so an open dashboard holds no thread. Each stream first subscribes, then replays what the
database already has, then follows the channel, skipping anything already sent: a reload or a
late tab never misses a point and never sees one twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import lru_cache
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse

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


_pools: dict[int, aioredis.BlockingConnectionPool] = {}
_open_streams: Counter = Counter()


def _pool() -> aioredis.BlockingConnectionPool:
    """One connection pool per event loop for every live stream of this process; when all its
    connections are in use, a new stream waits a little for one rather than opening another."""
    loop = asyncio.get_running_loop()
    if id(loop) not in _pools:
        _pools[id(loop)] = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=settings.SSE_MAX_CONNECTIONS, timeout=10
        )
    return _pools[id(loop)]


def stream_refused(user) -> HttpResponse | None:
    """A 429 when the user already holds SSE_MAX_STREAMS_PER_USER live streams in this process."""
    if _open_streams[user.id] >= settings.SSE_MAX_STREAMS_PER_USER:
        return JsonResponse(
            {
                "detail": f"too many live streams open ({settings.SSE_MAX_STREAMS_PER_USER} at most, "
                "setting SSE_MAX_STREAMS_PER_USER); close another tab"
            },
            status=429,
        )
    return None


async def follow(
    channel: str,
    replay: Callable[[], Awaitable[list[tuple[str, dict, Any]]]],
    on_message: Callable[[str, dict], tuple[list[str], bool]],
    *,
    user=None,
) -> AsyncIterator[str]:
    """Subscribe, replay stored events, then follow live ones until on_message says stop, or until the
    stream has lived SSE_MAX_SECONDS (the browser then reconnects, with Last-Event-ID, and misses nothing).

    `replay()` returns (kind, data, id) triples and is awaited after subscribing.
    `on_message(kind, data)` returns (SSE chunks to send, finished?).
    """
    client = aioredis.Redis(connection_pool=_pool())
    pubsub = client.pubsub()
    deadline = time.monotonic() + settings.SSE_MAX_SECONDS
    if user is not None:
        _open_streams[user.id] += 1
    try:
        await pubsub.subscribe(channel)
        yield ": connected\n\n"
        yield "retry: 1000\n\n"  # when the stream ends (its lifetime, a restart), come back within a second
        for kind, data, _event_id in await replay():
            chunks, done = on_message(kind, data)
            for chunk in chunks:
                yield chunk
            if done:
                return
        while time.monotonic() < deadline:
            wait = min(KEEPALIVE_SECONDS, max(0.0, deadline - time.monotonic()))
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
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
        if user is not None:
            _open_streams[user.id] -= 1
        await pubsub.aclose()
        await client.aclose()


def event_stream(chunks: AsyncIterator[str]) -> StreamingHttpResponse:
    """A server-sent-event response that no proxy buffers or caches."""
    response = StreamingHttpResponse(chunks, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
