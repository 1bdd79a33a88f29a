"""How errors reach a client: the REST API's exception handler (product errors as 4xx naming the
field), OpenAI-shaped error bodies, and JSON answers for unknown API paths and Django's
400/403/404/500 handlers."""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse
from django.urls import Resolver404, resolve
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from jobs.common.exceptions import Busy
from worker.errors import StudioError

REST_PREFIX = "/api/v1/"
OPENAI_PREFIX = "/v1/"


def failure_category(exc: BaseException) -> str:
    """A plain reason for an unexpected failure that users may read: the kind of problem, never the exception's
    text (it can hold server paths, addresses or library internals); log the details beside it."""
    if isinstance(exc, MemoryError):
        return "the server ran out of memory"
    if isinstance(exc, OSError):
        return "a file could not be read or written on the server"
    if isinstance(exc, (ValueError, KeyError, TypeError)):
        return "its contents are not in a form this product can read"
    return "an unexpected error on the server (the details are in the server's log)"


def rest_exception_handler(exc, context):
    """The product's errors (worker.errors.StudioError) become 4xx JSON naming the field (or file and line);
    never a 500 page. One that says when to come back (`retry_after`, e.g. Busy) sends it as Retry-After."""
    if isinstance(exc, StudioError):
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Busy) else None
        return Response({"error": exc.body()}, status=exc.status, headers=headers)
    return drf_exception_handler(exc, context)


class OpenAIError(Exception):
    """An error in OpenAI's shape: message, param, code, type and the HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        type_: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type_

    def body(self) -> dict[str, Any]:
        return openai_error_body(self.message, param=self.param, code=self.code, type_=self.type)


def openai_error_body(message: str, *, param=None, code=None, type_: str = "invalid_request_error") -> dict:
    """OpenAI's error object; every /v1/ error (and SSE error chunk) is built here."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openai_error_response(err: OpenAIError) -> JsonResponse:
    response = JsonResponse(err.body(), status=err.status)
    if err.status == 401:
        response["WWW-Authenticate"] = "Bearer"
    return response


def unknown_url_error(request) -> OpenAIError:
    """OpenAI's answer to a path it does not serve."""
    return OpenAIError(
        f"Unknown request URL: {request.method} {request.path}. Please check the URL for typos, or "
        f"see the API docs at /api/docs/.",
        code="unknown_url",
        status=404,
    )


_MESSAGES = {
    400: "Bad request",
    403: "You do not have permission to perform this action.",
    404: "Not found.",
    500: "The server had an error while processing your request.",
}


def _with_slash(path: str) -> str | None:
    """`path/` when that is a real route (Django's slash redirect cannot keep a POST body, so say it)."""
    if path.endswith("/"):
        return None
    try:
        match = resolve(path + "/")
    except Resolver404:
        return None
    return None if match.func is rest_unknown_path else path + "/"


@csrf_exempt  # answers 404 to every method; there is nothing to protect
def rest_unknown_path(request, rest: str = ""):
    """Any path under /api/v1/ that no route matches: DRF's `{"detail": ...}` 404 instead of a page."""
    hint = _with_slash(request.path)
    detail = f"No such endpoint: {request.method} {request.path}."
    if hint:
        detail += f" Did you mean {hint} (with a trailing slash)?"
    return JsonResponse({"detail": detail}, status=404)


@csrf_exempt
def openai_unknown_path(request, rest: str = ""):
    """Any path under /v1/ that no route matches: OpenAI's `unknown_url` 404."""
    return openai_error_response(unknown_url_error(request))


def _api_error(request, status: int, fallback, *args):
    if request.path.startswith(OPENAI_PREFIX):
        type_ = "server_error" if status >= 500 else "invalid_request_error"
        return openai_error_response(OpenAIError(_MESSAGES[status], status=status, type_=type_))
    if request.path.startswith(REST_PREFIX):
        return JsonResponse({"detail": _MESSAGES[status]}, status=status)
    return fallback(request, *args)


def bad_request(request, exception):
    return _api_error(request, 400, defaults.bad_request, exception)


def permission_denied(request, exception):
    return _api_error(request, 403, defaults.permission_denied, exception)


def page_not_found(request, exception):
    return _api_error(request, 404, defaults.page_not_found, exception)


def server_error(request):
    return _api_error(request, 500, defaults.server_error)
