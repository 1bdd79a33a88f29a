"""OpenAI-shaped errors for /v1/: the product's and DRF's exceptions mapped onto OpenAI's codes and
messages, and the API-key errors OpenAI's clients know (the error body itself: jobs.common.errors)."""

from __future__ import annotations

from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

from jobs.accounts.auth import api_key_from_header
from jobs.accounts.limits import QuotaExceeded
from jobs.common.errors import OpenAIError
from jobs.common.exceptions import Busy, ProductError
from jobs.datasets.mapping import MappingNeeded
from jobs.datasets.services import DatasetInUse
from jobs.training.services import JobStateError
from worker.data.problems import DatasetError
from worker.errors import InputError


def missing_key_error() -> OpenAIError:
    return OpenAIError(
        "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
        "(Authorization: Bearer ls-...); create one at /account/keys/.",
        code="invalid_api_key",
        status=401,
    )


def incorrect_key_error(raw_key: str) -> OpenAIError:
    shown = f"{raw_key[:5]}...{raw_key[-4:]}" if len(raw_key) > 12 else "***"
    return OpenAIError(
        f"Incorrect API key provided: {shown}. Keys are listed at /account/keys/ (a revoked key no longer works).",
        code="invalid_api_key",
        status=401,
    )


def method_not_allowed_error(request) -> OpenAIError:
    """OpenAI's answer to a known path with the wrong method."""
    return OpenAIError(f"Invalid method for URL ({request.method} {request.path})", status=405)


def as_openai_error(exc, request=None) -> OpenAIError | None:
    """Product and DRF exceptions as OpenAI errors (None: not one we know)."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, InputError):
        return OpenAIError(exc.message if exc.field in exc.message else f"{exc.field}: {exc.message}", param=exc.field)
    if isinstance(exc, DatasetError):
        return OpenAIError(str(exc), param="file", code="invalid_file")
    if isinstance(exc, MappingNeeded):
        return OpenAIError(
            f"{exc}; the columns found are {', '.join(exc.columns)}. Upload a file in the chat "
            f"(messages) or prompt/completion format.",
            param="file",
            code="invalid_file",
        )
    if isinstance(exc, DatasetInUse):
        return OpenAIError(str(exc), param="file_id", code="file_in_use", status=409)
    if isinstance(exc, JobStateError):
        # OpenAI answers a request the job's state forbids (cancel a finished job) with a 400.
        return OpenAIError(str(exc), code="invalid_state", status=400)
    if isinstance(exc, QuotaExceeded):
        return OpenAIError(exc.message, param=exc.limit, code="quota_exceeded", status=429, type_="requests")
    if isinstance(exc, Busy):
        return OpenAIError(exc.message, code="rate_limit_exceeded", status=429, type_="requests")
    if isinstance(exc, ProductError):
        return OpenAIError(exc.message, param=exc.field, status=exc.status)
    if isinstance(exc, Http404):
        return OpenAIError(str(exc) or "not found", code="not_found", status=404)
    if isinstance(exc, drf_exceptions.NotAuthenticated):
        return missing_key_error()
    if isinstance(exc, drf_exceptions.AuthenticationFailed):
        raw = api_key_from_header(request.headers.get("Authorization", "")) if request is not None else None
        return incorrect_key_error(raw or "")
    if isinstance(exc, drf_exceptions.Throttled):
        wait = exc.wait  # type: ignore[attr-defined]  # Throttled sets it in __init__; the stubs lack it
        return OpenAIError(
            f"Rate limit reached; retry in {wait or 1:.0f}s.", code="rate_limit_exceeded", status=429, type_="requests"
        )
    if isinstance(exc, drf_exceptions.ParseError):
        return OpenAIError(f"We could not parse the JSON body of your request. ({exc.detail})", code="invalid_json")
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        return OpenAIError(str(exc.detail), status=415)
    if isinstance(exc, drf_exceptions.MethodNotAllowed) and request is not None:
        return method_not_allowed_error(request)
    if isinstance(exc, drf_exceptions.APIException):
        return OpenAIError(str(exc.detail), status=exc.status_code)
    return None


def openai_exception_handler(exc, context):
    err = as_openai_error(exc, context.get("request"))
    if err is None:
        return None
    response = Response(err.body(), status=err.status)
    if err.status == 401:
        response["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, drf_exceptions.Throttled) and exc.wait:
        response["Retry-After"] = str(int(exc.wait) + 1)
    if isinstance(exc, Busy):
        response["Retry-After"] = str(exc.retry_after)  # Busy keeps it a whole number of seconds, at least 1
    return response
