"""Live streams share one Redis connection pool, are capped per user, and end after their lifetime
(the browser reconnects with Last-Event-ID and misses nothing). Against the machine's real Redis."""

import asyncio
import json
import time

import pytest

from jobs.common import events


def collect(gen, limit=50):
    async def run():
        out = []
        async for chunk in gen:
            out.append(chunk)
            if len(out) >= limit:
                break
        await gen.aclose()
        return out

    return asyncio.run(run())


@pytest.fixture
def redis_settings(settings, real_redis):
    events._pools.clear()
    yield settings
    events._pools.clear()


def test_a_stream_ends_at_its_lifetime_and_tells_the_browser_to_come_back(redis_settings):
    redis_settings.SSE_MAX_SECONDS = 1

    async def replay():
        return [("metric", {"step": 1}, 1)]

    started = time.monotonic()
    chunks = collect(events.follow("job:x", replay, lambda kind, data: ([events.sse(kind, data, data["step"])], False)))
    assert 0.9 <= time.monotonic() - started < 5
    assert chunks[0] == ": connected\n\n" and chunks[1].startswith("retry: 1000")
    assert "id: 1\nevent: metric" in chunks[2]


def test_streams_are_capped_per_user_and_share_a_pool(redis_settings, user, other_user):
    redis_settings.SSE_MAX_STREAMS_PER_USER = 2
    redis_settings.SSE_MAX_SECONDS = 30

    async def replay():
        return []

    async def scenario():
        finished = asyncio.Event()

        def on_message(kind, data):
            return [], kind == "stop"

        streams = [events.follow(f"chat:{i}", replay, on_message, user=user) for i in range(2)]
        for stream in streams:
            assert await stream.__anext__() == ": connected\n\n"
        refused = events.stream_refused(user)
        assert refused.status_code == 429 and "SSE_MAX_STREAMS_PER_USER" in json.loads(refused.content)["detail"]
        assert events.stream_refused(other_user) is None  # another user is not affected
        assert len(events._pools) == 1  # one pool for the process's streams
        for i, stream in enumerate(streams):
            events.publish(f"chat:{i}", "stop", {})
            async for _ in stream:
                pass
        finished.set()
        assert events.stream_refused(user) is None  # closed streams give their slots back

    asyncio.run(scenario())
