"""An ASGI middleware that caps the size of every request body before Django (or authentication)
sees it: a declared Content-Length over the limit is answered 413 without reading a byte, and a
body that streams past the limit (chunked, or longer than it declared) stops being read there.

A request that carries no credentials at all (no session cookie, no Bearer key) gets a much smaller
limit: the sign-in and sign-up forms need a few KB, and nobody should stream 200 MB to a server
before signing in. Only the credentials' presence is checked here (Django checks them after); a forged
cookie gets the large limit and is then refused by authentication as any other."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RequestBodyLimit:
    """Wraps an ASGI app; the limits are read per request, so a changed setting applies at once.
    `anonymous` (the smaller limit and the session cookie's name) applies to requests without credentials."""

    def __init__(self, app, *, max_bytes: Callable[[], int], anonymous: Callable[[], tuple[int, str]] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.anonymous = anonymous

    def _limit(self, scope: dict) -> tuple[int, str]:
        """The limit for this request and the setting that names it."""
        if self.anonymous is not None:
            small, cookie_name = self.anonymous()
            if not _has_credentials(scope, cookie_name):
                return small, "MAX_ANONYMOUS_REQUEST_BYTES; sign in first"
        return self.max_bytes(), "MAX_REQUEST_BYTES"

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self._limit(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, limit, setting)
            return
        received = 0
        refused = started = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # The app sees the client go away; it never gets the rest of the body.
                    refused = True
                    if not started:
                        await _refuse(send, limit, setting)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 has been sent in the app's place
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


def _has_credentials(scope: dict, cookie_name: str) -> bool:
    """Whether the request carries a session cookie named `cookie_name` or an `Authorization: Bearer` header."""
    wanted = cookie_name.encode("latin-1")
    for name, value in scope.get("headers", ()):
        name = name.lower()
        if name == b"authorization" and value[:7].lower() == b"bearer " and value[7:].strip():
            return True
        if name == b"cookie":
            for part in value.split(b";"):
                key, _, cookie = part.strip().partition(b"=")
                if key == wanted and cookie:
                    return True
    return False


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None


async def _refuse(send: Send, limit: int, setting: str) -> None:
    shown = f"{limit / (1024 * 1024):.0f} MB" if limit >= 1024 * 1024 else f"{limit:,} bytes"
    if setting == "MAX_REQUEST_BYTES":
        message = f"the request body is larger than the limit of {shown} (MAX_REQUEST_BYTES)"
    else:
        message = f"the request body is larger than the limit of {shown} for a request without a session or API key ({setting})"
    # One body that both the REST API's and the OpenAI-compatible API's clients understand.
    body = json.dumps(
        {
            "error": {
                "field": "request",
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "request_too_large",
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
