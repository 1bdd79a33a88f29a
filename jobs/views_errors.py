"""JSON errors for the two APIs where Django would answer with an HTML page: an unknown path under
/api/v1/ or /v1/, and the 400 / 403 / 404 / 500 handlers for requests to them. Other paths keep
Django's pages."""
from __future__ import annotations

from django.http import JsonResponse
from django.urls import Resolver404, resolve
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt

from jobs.openai_api import ApiError, error_body, unknown_url_error

REST_PREFIX = "/api/v1/"
OPENAI_PREFIX = "/v1/"

_MESSAGES = {400: "Bad request", 403: "You do not have permission to perform this action.", 404: "Not found.",
             500: "The server had an error while processing your request."}


def _openai_response(err: ApiError) -> JsonResponse:
    return JsonResponse(error_body(err.message, param=err.param, code=err.code, type_=err.type), status=err.status)


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
    return _openai_response(unknown_url_error(request))


def _api_error(request, status: int, fallback, *args):
    if request.path.startswith(OPENAI_PREFIX):
        type_ = "server_error" if status >= 500 else "invalid_request_error"
        return _openai_response(ApiError(_MESSAGES[status], status=status, type_=type_))
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
