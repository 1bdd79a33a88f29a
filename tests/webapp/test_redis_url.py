"""A REDIS_URL with a password, and rediss:// (Redis over TLS), reach every Redis client of the product:
the Celery broker, the events client (sync and async) and the cache (README "Keep the servers off public
networks"). Nothing connects: the clients' connection parameters are read."""

import json

import pytest

from tests.webapp.test_security_settings import PRODUCTION, django_process

CODE = """
import asyncio, json, ssl
from unittest import mock
import django; django.setup()
from django.conf import settings
from kombu.transport import redis as kombu_redis
from jobs.common import events
from webapp.celery import app

def params(kwargs, cls):
    reqs = kwargs.get("ssl_cert_reqs", "required" if cls.endswith("SSLConnection") else None)
    reqs = {ssl.CERT_REQUIRED: "required", ssl.CERT_NONE: "none"}.get(reqs, reqs)
    return {"password": kwargs.get("password"), "tls": cls.endswith("SSLConnection"), "cert_reqs": reqs}

with mock.patch("redis.Redis.ping", return_value=True):
    channel = app.connection_for_write().default_channel
    broker = channel._connparams()
pool = events.redis_client().connection_pool
async def _async_pool():
    return events._pool()
async_pool = asyncio.run(_async_pool())
print(json.dumps({
    "broker": params(broker, broker["connection_class"].__name__),
    "events": params(pool.connection_kwargs, pool.connection_class.__name__),
    "events_async": params(async_pool.connection_kwargs, async_pool.connection_class.__name__),
    "cache": settings.CACHES["default"]["LOCATION"],
}))
"""


def clients(tmp_path, url: str) -> dict:
    done = django_process(tmp_path, {"SECRET_KEY": PRODUCTION["SECRET_KEY"], "REDIS_URL": url}, CODE)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("url", "tls"),
    [
        ("redis://:s3cret-%40pw@10.0.0.1:6379/0", False),
        ("rediss://:s3cret-%40pw@10.0.0.1:6380/0", True),
        ("rediss://:s3cret-%40pw@10.0.0.1:6380/0?ssl_ca_certs=/etc/ssl/redis-ca.pem", True),
    ],
)
def test_every_redis_client_signs_in_and_checks_the_certificate(tmp_path, url, tls):
    got = clients(tmp_path, url)
    for name in ("broker", "events", "events_async"):
        assert got[name]["password"] == "s3cret-@pw", name
        assert got[name]["tls"] is tls, name
        if tls:
            # kombu alone would take rediss:// without ssl_cert_reqs as "accept any certificate".
            assert got[name]["cert_reqs"] == "required", name
    assert got["cache"] == url.replace(":6379/0", ":6379/1").replace(":6380/0", ":6380/1")


def test_an_explicit_ssl_cert_reqs_in_the_url_is_kept(tmp_path):
    got = clients(tmp_path, "rediss://:pw@10.0.0.1:6380/0?ssl_cert_reqs=none")
    assert got["broker"]["cert_reqs"] == "none" and got["broker"]["tls"] is True
