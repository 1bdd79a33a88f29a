"""What every /v1/ view shares: the base view (Bearer keys or a session, OpenAI-shaped errors), its
schema decorator, list pages, request-body type checks, and the owner's files and jobs by public id."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.views import APIView

from jobs.common.errors import OpenAIError
from jobs.common.ids import parse_public_id
from jobs.common.rest import SafeJSONParser
from jobs.common.schema import openai_error_responses
from jobs.datasets.models import Dataset
from jobs.datasets.selectors import dataset_find, upload_check_find
from jobs.openai_compat.errors import openai_exception_handler
from jobs.training.models import FineTuneJob
from jobs.training.selectors import job_find


def openai_schema(operation_id: str, *, errors=(), request=None, response=OpenApiTypes.OBJECT, parameters=()):
    """`extend_schema` for a /v1/ route: OpenAI's operation id, a free-form object (OpenAI's shape) and
    OpenAI-style errors."""
    return extend_schema(
        operation_id=operation_id,
        tags=["openai"],
        request=request,
        parameters=list(parameters),
        responses={200: response, **openai_error_responses(*errors)},
    )


PAGE_PARAMS = [
    OpenApiParameter("after", str, required=False, description="the id of the last item of the previous page"),
    OpenApiParameter("limit", int, required=False, description="1 to 100"),
]


class OpenAIView(APIView):
    """Bearer API keys (or a browser session), OpenAI-shaped errors."""

    parser_classes = [SafeJSONParser]

    def get_exception_handler(self):
        return openai_exception_handler


def unix_time(value) -> int | None:
    return int(value.timestamp()) if value else None


def owned_dataset(owner, value: str, param: str) -> Dataset:
    """The owner's dataset named by a `file-...` id, or a 404 in OpenAI's words (a 400 while the file is still
    being checked in the background, or when its check refused it)."""
    pk = parse_public_id(value, "file-")
    ds = dataset_find(owner=owner, dataset_id=pk) if pk else None
    check = upload_check_find(owner=owner, check_id=pk) if pk and ds is None else None
    if check is not None:
        state = "could not be processed (see its status_details)" if check.done else "is still being processed"
        raise OpenAIError(
            f"File {value} {state}; use it once its status is processed", param=param, code="file_not_ready"
        )
    if ds is None:
        raise OpenAIError(f"No such File object: {value}", param=param, code="file_not_found", status=404)
    return ds


def owned_job(owner, value: str) -> FineTuneJob:
    """The owner's job named by a `ftjob-...` id, or a 404 in OpenAI's words."""
    pk = parse_public_id(value, "ftjob-")
    job = job_find(owner=owner, job_id=pk) if pk else None
    if job is None:
        raise OpenAIError(f"No such fine-tuning job: {value}", param="fine_tuning_job_id", code="not_found", status=404)
    return job


JSON_TYPES: dict[str, tuple[type, ...]] = {
    "a string": (str,),
    "an integer": (int,),
    "a decimal": (int, float),
    "a boolean": (bool,),
    "an object": (dict,),
    "an array": (list,),
}


def json_type(value: Any) -> str:
    for name, kinds in (
        ("a boolean", (bool,)),
        ("an integer", (int,)),
        ("a decimal", (float,)),
        ("a string", (str,)),
        ("an array", (list,)),
        ("an object", (dict,)),
    ):
        if isinstance(value, kinds):
            return name
    return "null"


def known_fields(body: Any, fields: dict[str, str]) -> dict:
    """The body as a dict, checked against `fields` (name -> expected JSON type, a key of JSON_TYPES): an
    unknown parameter or one of the wrong type is a 400 naming it, as OpenAI answers. null means absent."""
    if not isinstance(body, dict):
        raise OpenAIError(
            f"Invalid type for the request body: expected an object, but got {json_type(body)} instead.",
            code="invalid_type",
        )
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise OpenAIError(f"Unknown parameter: '{unknown[0]}'.", param=unknown[0], code="unknown_parameter")
    for name, expected in fields.items():
        value = body.get(name)
        is_number = expected in ("an integer", "a decimal")
        if value is not None and (
            not isinstance(value, JSON_TYPES[expected]) or (is_number and isinstance(value, bool))
        ):
            raise OpenAIError(
                f"Invalid type for '{name}': expected {expected}, but got {json_type(value)} instead.",
                param=name,
                code="invalid_type",
            )
    return body


def page_params(request, default_limit: int = 20) -> tuple[str | None, int]:
    try:
        limit = int(request.query_params.get("limit", default_limit))
    except ValueError:
        raise OpenAIError("limit must be an integer", param="limit") from None
    if not 1 <= limit <= 100:
        raise OpenAIError("limit must be between 1 and 100", param="limit")
    return request.query_params.get("after") or None, limit


def page(items: list[dict], after: str | None, limit: int) -> dict:
    """Cursor page: the items following the one whose id is `after`."""
    start = 0
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise OpenAIError(f"No such item for after: {after}", param="after", status=404)
        start = ids.index(after) + 1
    chunk = items[start : start + limit]
    return {"object": "list", "data": chunk, "has_more": start + limit < len(items)}
