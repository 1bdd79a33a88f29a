"""The request body limit in front of Django (common/request_limit.py, wired in webapp/asgi.py):
called as ASGI with a fake scope, receive and send, around a stub app and around the real one."""

import asyncio
import json

import pytest

from jobs.common.request_limit import RequestBodyLimit


def run(app, *, headers=(), chunks=(b"",), path="/api/v1/datasets/"):
    """Call `app` with a POST of `chunks`; (messages sent, how many chunks the app pulled)."""
    sent, pulled = [], 0
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        nonlocal pulled
        if pulled < len(queue):
            pulled += 1
            return queue[pulled - 1]
        await asyncio.sleep(3600)  # a client that sends nothing more

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    return sent, pulled


class EchoApp:
    """Reads the whole body the way Django's ASGI handler does, then answers its length."""

    def __init__(self):
        self.calls = 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


def status_and_body(sent):
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read():
    app = EchoApp()
    sent, pulled = run(
        RequestBodyLimit(app, max_bytes=lambda: 100), headers=[(b"content-length", b"101")], chunks=[b"x" * 101]
    )
    status, body = status_and_body(sent)
    assert status == 413 and pulled == 0 and app.calls == 0
    assert json.loads(body)["error"]["message"] == (
        "the request body is larger than the limit of 100 bytes (MAX_REQUEST_BYTES)"
    )


def test_a_body_at_the_limit_reaches_the_app():
    sent, _ = run(
        RequestBodyLimit(EchoApp(), max_bytes=lambda: 100),
        headers=[(b"content-length", b"100")],
        chunks=[b"x" * 60, b"x" * 40],
    )
    assert status_and_body(sent) == (200, b"100")


def test_a_chunked_body_stops_being_read_past_the_limit():
    app = EchoApp()
    chunks = [b"x" * 40] * 10  # no content-length: 400 bytes streamed against a limit of 100
    sent, pulled = run(RequestBodyLimit(app, max_bytes=lambda: 100), chunks=chunks)
    status, _ = status_and_body(sent)
    assert status == 413 and len(sent) == 2  # the app's own answer is never sent
    assert pulled == 3  # 120 bytes read, then nothing more
    assert app.calls == 1


def test_a_body_longer_than_it_declared_is_cut_too():
    sent, pulled = run(
        RequestBodyLimit(EchoApp(), max_bytes=lambda: 100),
        headers=[(b"content-length", b"50")],
        chunks=[b"x" * 60, b"x" * 60, b"x" * 60],
    )
    assert sent[0]["status"] == 413 and pulled == 2


@pytest.mark.django_db(transaction=True)
def test_the_real_application_refuses_before_authentication(settings):
    from webapp.asgi import application

    settings.MAX_REQUEST_BYTES = 1000
    big, _ = run(
        application,
        headers=[
            (b"content-length", b"5000"),
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer ls-not-a-key"),
        ],
        chunks=[b"{" + b" " * 4998 + b"}"],
    )
    assert big[0]["status"] == 413
    small, _ = run(
        application, headers=[(b"content-length", b"2"), (b"content-type", b"application/json")], chunks=[b"{}"]
    )
    assert small[0]["status"] in (401, 403)  # Django answered: nobody is signed in


def test_the_limit_defaults_to_the_upload_limit_plus_a_megabyte():
    from django.conf import settings

    assert settings.MAX_REQUEST_BYTES == settings.DATASET_MAX_BYTES + 1024 * 1024


@pytest.mark.django_db(transaction=True)
def test_a_request_without_credentials_gets_the_small_limit(settings):
    from webapp.asgi import application

    settings.MAX_REQUEST_BYTES, settings.MAX_ANONYMOUS_REQUEST_BYTES = 10_000_000, 64 * 1024
    body = b"{" + b" " * (100 * 1024) + b"}"
    json_body = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    anonymous, pulled = run(application, headers=json_body, chunks=[body])
    status, answer = status_and_body(anonymous)
    assert status == 413 and pulled == 0
    assert json.loads(answer)["error"]["message"] == (
        "the request body is larger than the limit of 65,536 bytes for a request without a session or API key "
        "(MAX_ANONYMOUS_REQUEST_BYTES; sign in first)"
    )
    # Streamed without a length, it is cut at the small limit too.
    chunked, _ = run(application, headers=json_body[1:], chunks=[b"x" * 40_000] * 3)
    assert chunked[0]["status"] == 413
    # A Bearer key or a session cookie (checked by Django afterwards) gets the large limit.
    bearer, _ = run(application, headers=[*json_body, (b"authorization", b"Bearer ls-not-a-key")], chunks=[body])
    assert bearer[0]["status"] in (401, 403)
    cookie = f"csrftoken=x; {settings.SESSION_COOKIE_NAME}=not-a-session".encode()
    session, _ = run(application, headers=[*json_body, (b"cookie", cookie)], chunks=[body])
    assert session[0]["status"] in (401, 403)
    # A cookie other than the session's, or an empty one, is no credential.
    for other in (b"csrftoken=x", f"{settings.SESSION_COOKIE_NAME}=".encode()):
        refused, _ = run(application, headers=[*json_body, (b"cookie", other)], chunks=[body])
        assert refused[0]["status"] == 413
    # The sign-in form is far below the small limit.
    form = b"username=alice&password=wrong"
    login, _ = run(
        application,
        path="/accounts/login/",
        headers=[(b"content-length", str(len(form)).encode()), (b"content-type", b"application/x-www-form-urlencoded")],
        chunks=[form],
    )
    assert login[0]["status"] in (200, 403)  # the form answered (a 403 for the missing CSRF token)


def test_the_anonymous_limit_defaults_to_64_kb():
    from django.conf import settings

    assert settings.MAX_ANONYMOUS_REQUEST_BYTES == 64 * 1024
