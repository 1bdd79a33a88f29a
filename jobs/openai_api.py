"""An OpenAI-compatible API under /v1/: files, fine-tuning jobs, models and chat completions.

Same shapes as OpenAI's, so the official `openai` client works against LoRA Studio with
`base_url=".../v1"` and a personal API key. The views stay thin: they translate ids and
parameters and call the same services and selectors as the browser and the REST API. One extra,
documented field: `lora` on job creation, mapped onto `worker.config.TrainConfig`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import types
import uuid
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.http import FileResponse, Http404, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework import exceptions as drf_exceptions
from rest_framework import status as http
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs import events, selectors, services
from jobs.auth import ApiKeyRateThrottle, api_key_from_header, api_key_lookup
from jobs.schema import openai_error_responses
from jobs.models import (BaseModel, ChatAnswer, ChatSession, Dataset, FineTuneJob, JobEvent, JobStatus,
                         MetricPoint)
from worker.config import ConfigError, GenerationConfig, TrainConfig
from worker.data import DatasetError

DEFAULT_LR = TrainConfig().learning_rate
LORA_FIELDS = ("rank", "alpha", "dropout", "target_preset", "target_modules", "qlora", "use_rslora", "use_dora",
               "bias", "init_lora_weights", "modules_to_save")
OWNED_BY = "lora-studio"


class ApiError(Exception):
    """An OpenAI-style error: message, param, code and HTTP status."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type_


def error_body(message: str, *, param=None, code=None, type_: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def missing_key_error() -> ApiError:
    return ApiError("You didn't provide an API key. Send it in an Authorization header using Bearer auth "
                    "(Authorization: Bearer ls-...); create one at /account/keys/.", code="invalid_api_key", status=401)


def incorrect_key_error(raw_key: str) -> ApiError:
    shown = f"{raw_key[:5]}...{raw_key[-4:]}" if len(raw_key) > 12 else "***"
    return ApiError(f"Incorrect API key provided: {shown}. Keys are listed at /account/keys/ (a revoked key no "
                    f"longer works).", code="invalid_api_key", status=401)


def method_not_allowed_error(request) -> ApiError:
    """OpenAI's answer to a known path with the wrong method."""
    return ApiError(f"Invalid method for URL ({request.method} {request.path})", status=405)


def unknown_url_error(request) -> ApiError:
    """OpenAI's answer to a path it does not serve."""
    return ApiError(f"Unknown request URL: {request.method} {request.path}. Please check the URL for typos, or "
                    f"see the API docs at /api/docs/.", code="unknown_url", status=404)


def _as_api_error(exc, request=None) -> ApiError | None:
    """Product and DRF exceptions as OpenAI errors (None: not one we know)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ConfigError):
        return ApiError(exc.message if exc.field in exc.message else f"{exc.field}: {exc.message}", param=exc.field)
    if isinstance(exc, DatasetError):
        return ApiError(str(exc), param="file", code="invalid_file")
    if isinstance(exc, services.MappingNeeded):
        return ApiError(f"{exc}; the columns found are {', '.join(exc.columns)}. Upload a file in the chat "
                        f"(messages) or prompt/completion format.", param="file", code="invalid_file")
    if isinstance(exc, services.DatasetInUse):
        return ApiError(str(exc), param="file_id", code="file_in_use", status=409)
    if isinstance(exc, services.JobStateError):
        # OpenAI answers a request the job's state forbids (cancel a finished job) with a 400.
        return ApiError(str(exc), code="invalid_state", status=400)
    if isinstance(exc, Http404):
        return ApiError(str(exc) or "not found", code="not_found", status=404)
    if isinstance(exc, drf_exceptions.NotAuthenticated):
        return missing_key_error()
    if isinstance(exc, drf_exceptions.AuthenticationFailed):
        raw = api_key_from_header(request.headers.get("Authorization", "")) if request is not None else None
        return incorrect_key_error(raw or "")
    if isinstance(exc, drf_exceptions.Throttled):
        return ApiError(f"Rate limit reached; retry in {exc.wait or 1:.0f}s.", code="rate_limit_exceeded",
                        status=429, type_="requests")
    if isinstance(exc, drf_exceptions.ParseError):
        return ApiError(f"We could not parse the JSON body of your request. ({exc.detail})", code="invalid_json")
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        return ApiError(str(exc.detail), status=415)
    if isinstance(exc, drf_exceptions.MethodNotAllowed) and request is not None:
        return method_not_allowed_error(request)
    if isinstance(exc, drf_exceptions.APIException):
        return ApiError(str(exc.detail), status=exc.status_code)
    return None


def openai_exception_handler(exc, context):
    err = _as_api_error(exc, context.get("request"))
    if err is None:
        return None
    response = Response(error_body(err.message, param=err.param, code=err.code, type_=err.type), status=err.status)
    if err.status == 401:
        response["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, drf_exceptions.Throttled) and exc.wait:
        response["Retry-After"] = str(int(exc.wait) + 1)
    return response


def openai_schema(operation_id: str, *, errors=(), request=None, response=OpenApiTypes.OBJECT, parameters=()):
    """`extend_schema` for a /v1/ route: OpenAI's operation id, a free-form object (OpenAI's shape) and
    OpenAI-style errors."""
    return extend_schema(operation_id=operation_id, tags=["openai"], request=request, parameters=list(parameters),
                         responses={200: response, **openai_error_responses(*errors)})


PAGE_PARAMS = [OpenApiParameter("after", str, required=False, description="the id of the last item of the "
                                                                          "previous page"),
               OpenApiParameter("limit", int, required=False, description="1 to 100")]


class OpenAIView(APIView):
    """Bearer API keys (or a browser session), OpenAI-shaped errors."""

    parser_classes = [JSONParser]

    def get_exception_handler(self):
        return openai_exception_handler


# --- ids and small helpers -----------------------------------------------------------------

def _unix(value) -> int | None:
    return int(value.timestamp()) if value else None


def _parse_id(value: str, prefix: str) -> uuid.UUID | None:
    """The uuid in `<prefix><hex>`, or None: an id of the wrong form names nothing, so it is a 404 like
    an unknown one (as OpenAI answers)."""
    if not isinstance(value, str) or not value.startswith(prefix):
        return None
    try:
        return uuid.UUID(hex=value[len(prefix):])
    except ValueError:
        return None


def file_id(dataset_id) -> str:
    return f"file-{uuid.UUID(str(dataset_id)).hex}"


def ftjob_id(job: FineTuneJob) -> str:
    return f"ftjob-{job.id.hex}"


def _dataset(owner, value: str, param: str) -> Dataset:
    pk = _parse_id(value, "file-")
    ds = selectors.dataset_list(owner=owner).filter(id=pk).first() if pk else None
    if ds is None:
        raise ApiError(f"No such File object: {value}", param=param, code="file_not_found", status=404)
    return ds


def _job(owner, value: str) -> FineTuneJob:
    pk = _parse_id(value, "ftjob-")
    job = selectors.job_list(owner=owner).filter(id=pk).first() if pk else None
    if job is None:
        raise ApiError(f"No such fine-tuning job: {value}", param="fine_tuning_job_id", code="not_found",
                       status=404)
    return job


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40]


def fine_tuned_model(job: FineTuneJob) -> str | None:
    """`ft:<base>:<suffix or user>:<job short id>` once the job has succeeded."""
    if job.status != JobStatus.SUCCEEDED:
        return None
    return f"ft:{job.base_model.name}:{_slug(job.name) or _slug(job.owner.username) or 'user'}:{job.short_id}"


JSON_TYPES: dict[str, tuple[type, ...]] = {"a string": (str,), "an integer": (int,), "a decimal": (int, float),
                                           "a boolean": (bool,), "an object": (dict,), "an array": (list,)}


def _json_type(value: Any) -> str:
    for name, kinds in (("a boolean", (bool,)), ("an integer", (int,)), ("a decimal", (float,)),
                        ("a string", (str,)), ("an array", (list,)), ("an object", (dict,))):
        if isinstance(value, kinds):
            return name
    return "null"


def _known_fields(body: Any, fields: dict[str, str]) -> dict:
    """The body as a dict, checked against `fields` (name -> expected JSON type, a key of JSON_TYPES): an
    unknown parameter or one of the wrong type is a 400 naming it, as OpenAI answers. null means absent."""
    if not isinstance(body, dict):
        raise ApiError(f"Invalid type for the request body: expected an object, but got {_json_type(body)} "
                       f"instead.", code="invalid_type")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise ApiError(f"Unknown parameter: '{unknown[0]}'.", param=unknown[0], code="unknown_parameter")
    for name, expected in fields.items():
        value = body.get(name)
        is_number = expected in ("an integer", "a decimal")
        if value is not None and (not isinstance(value, JSON_TYPES[expected])
                                  or (is_number and isinstance(value, bool))):
            raise ApiError(f"Invalid type for '{name}': expected {expected}, but got {_json_type(value)} instead.",
                           param=name, code="invalid_type")
    return body


def _page_params(request, default_limit: int = 20) -> tuple[str | None, int]:
    try:
        limit = int(request.query_params.get("limit", default_limit))
    except ValueError:
        raise ApiError("limit must be an integer", param="limit") from None
    if not 1 <= limit <= 100:
        raise ApiError("limit must be between 1 and 100", param="limit")
    return request.query_params.get("after") or None, limit


def _page(items: list[dict], after: str | None, limit: int) -> dict:
    """Cursor page: the items following the one whose id is `after`."""
    start = 0
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise ApiError(f"No such item for after: {after}", param="after", status=404)
        start = ids.index(after) + 1
    chunk = items[start:start + limit]
    return {"object": "list", "data": chunk, "has_more": start + limit < len(items)}


# --- files ---------------------------------------------------------------------------------

def file_object(ds: Dataset) -> dict[str, Any]:
    return {"id": file_id(ds.id), "object": "file", "bytes": ds.size_bytes, "created_at": _unix(ds.created),
            "filename": ds.original_name or ds.name, "purpose": "fine-tune", "status": "processed",
            "status_details": None, "expires_at": None}


class FileListApi(OpenAIView):
    """GET: the user's files. POST (multipart file + purpose=fine-tune): upload and validate."""

    parser_classes = [MultiPartParser]

    @openai_schema("listFiles", parameters=[OpenApiParameter("purpose", str, required=False)])
    def get(self, request):
        purpose = request.query_params.get("purpose")
        data = [] if purpose and purpose != "fine-tune" else [file_object(d) for d in
                                                              selectors.dataset_list(owner=request.user)]
        return Response({"object": "list", "data": data, "has_more": False})

    @openai_schema("createFile", errors=(400, 409), request=inline_serializer(
        "FileUpload", {"file": serializers.FileField(), "purpose": serializers.ChoiceField(["fine-tune"])}))
    def post(self, request):
        upload = request.FILES.get("file")
        if upload is None:
            raise ApiError("Missing the multipart field 'file'", param="file")
        purpose = request.data.get("purpose")
        if purpose != "fine-tune":
            raise ApiError(f"purpose must be 'fine-tune', got {purpose!r}", param="purpose")
        ds = services.dataset_create(owner=request.user, upload=upload, name=upload.name)
        return Response(file_object(ds), status=http.HTTP_200_OK)


class FileDetailApi(OpenAIView):
    @openai_schema("retrieveFile", errors=(404,))
    def get(self, request, file_id):
        return Response(file_object(_dataset(request.user, file_id, "file_id")))

    @openai_schema("deleteFile", errors=(404, 409))
    def delete(self, request, file_id):
        ds = _dataset(request.user, file_id, "file_id")
        services.dataset_delete(dataset=ds)
        return Response({"id": file_id, "object": "file", "deleted": True})


class FileContentApi(OpenAIView):
    @openai_schema("downloadFile", errors=(404,), response=OpenApiTypes.BINARY)
    def get(self, request, file_id):
        ds = _dataset(request.user, file_id, "file_id")
        return FileResponse(open(services.media_path(ds.file), "rb"), as_attachment=True,
                            filename=ds.original_name or "dataset", content_type="application/octet-stream")


# --- fine-tuning jobs ----------------------------------------------------------------------

def _hyperparameters(config: dict) -> dict[str, Any]:
    return {"n_epochs": config.get("epochs"), "batch_size": config.get("batch_size"),
            "learning_rate_multiplier": round(config.get("learning_rate", DEFAULT_LR) / DEFAULT_LR, 6)}


def job_object(job: FineTuneJob) -> dict[str, Any]:
    config = job.config or {}
    hyper = _hyperparameters(config)
    validation = job.validation or {}
    return {
        "id": ftjob_id(job), "object": "fine_tuning.job", "model": job.base_model.name,
        "created_at": _unix(job.created), "finished_at": _unix(job.finished),
        "fine_tuned_model": fine_tuned_model(job), "organization_id": f"user-{job.owner_id}",
        "result_files": [], "status": job.status,
        "validation_file": file_id(validation["dataset"]) if validation.get("kind") == "dataset" else None,
        "training_file": file_id(job.dataset_id) if job.dataset_id else None,
        "hyperparameters": hyper,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        "trained_tokens": None,
        "error": ({"code": "training_failed", "message": job.error, "param": None}
                  if job.status == JobStatus.FAILED else None),
        "seed": config.get("seed"), "estimated_finish": None, "integrations": [], "metadata": None,
        "suffix": job.name or None, "user_provided_suffix": job.name or None,
        "lora": {k: config.get(k) for k in LORA_FIELDS},
    }


JOB_FIELDS = {"model": "a string", "training_file": "a string", "validation_file": "a string", "suffix": "a string",
              "seed": "an integer", "hyperparameters": "an object", "method": "an object", "lora": "an object",
              "integrations": "an array", "metadata": "an object"}
HYPER_FIELDS = {"n_epochs", "batch_size", "learning_rate_multiplier"}


def _hyper_to_config(hyper: Any, param: str) -> dict[str, Any]:
    if hyper is None:
        return {}
    if not isinstance(hyper, dict):
        raise ApiError(f"{param} must be an object", param=param)
    unknown = set(hyper) - HYPER_FIELDS
    if unknown:
        raise ApiError(f"Unknown parameter: '{param}.{sorted(unknown)[0]}'", param=f"{param}.{sorted(unknown)[0]}",
                       code="unknown_parameter")
    out: dict[str, Any] = {}
    names = {"n_epochs": "epochs", "batch_size": "batch_size"}
    for key, value in hyper.items():
        if value == "auto" or value is None:
            continue
        if key == "learning_rate_multiplier":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ApiError(f"{param}.learning_rate_multiplier must be a positive number or 'auto'",
                               param=f"{param}.learning_rate_multiplier")
            out["learning_rate"] = float(value) * DEFAULT_LR
        else:
            out[names[key]] = value
    return out


def job_config_from_request(body: dict) -> TrainConfig:
    """Map OpenAI hyperparameters (either form) and the `lora` extra onto a validated TrainConfig."""
    values = _hyper_to_config(body.get("hyperparameters"), "hyperparameters")
    method = body.get("method")
    if method is not None:
        if not isinstance(method, dict) or method.get("type", "supervised") != "supervised":
            raise ApiError("Only method.type 'supervised' is supported", param="method.type")
        supervised = method.get("supervised") or {}
        if not isinstance(supervised, dict):
            raise ApiError("method.supervised must be an object", param="method.supervised")
        values.update(_hyper_to_config(supervised.get("hyperparameters"), "method.supervised.hyperparameters"))
    lora = body.get("lora") or {}
    if not isinstance(lora, dict):
        raise ApiError("lora must be an object", param="lora")
    unknown = set(lora) - set(LORA_FIELDS)
    if unknown:
        raise ApiError(f"Unknown parameter: 'lora.{sorted(unknown)[0]}'; allowed: {', '.join(LORA_FIELDS)}",
                       param=f"lora.{sorted(unknown)[0]}", code="unknown_parameter")
    values.update(lora)
    if body.get("seed") is not None:
        values["seed"] = body["seed"]
    try:
        return TrainConfig.from_dict(values)
    except ConfigError as exc:
        param = {"epochs": "hyperparameters.n_epochs", "learning_rate": "hyperparameters.learning_rate_multiplier",
                 "batch_size": "hyperparameters.batch_size", "seed": "seed"}.get(exc.field, f"lora.{exc.field}")
        raise ApiError(f"{param}: {exc.message}", param=param) from None
    except TypeError as exc:
        raise ApiError(str(exc), param="lora") from None


class JobListApi(OpenAIView):
    @openai_schema("listPaginatedFineTuningJobs", errors=(400, 404), parameters=PAGE_PARAMS)
    def get(self, request):
        after, limit = _page_params(request)
        jobs = [job_object(j) for j in selectors.job_list(owner=request.user).select_related("owner")]
        return Response(_page(jobs, after, limit))

    @openai_schema("createFineTuningJob", errors=(400, 404), request=OpenApiTypes.OBJECT)
    def post(self, request):
        body = _known_fields(request.data, JOB_FIELDS)
        for required in ("model", "training_file"):
            if not body.get(required):
                raise ApiError(f"Missing required parameter: '{required}'.", param=required,
                               code="missing_required_parameter")
        base = selectors.base_model_list().filter(name=body["model"]).first()
        if base is None:
            raise ApiError(f"The model '{body['model']}' does not exist or is not a base model you can fine-tune",
                           param="model", code="model_not_found", status=404)
        dataset = _dataset(request.user, body["training_file"], "training_file")
        validation: dict[str, Any] = {"kind": "none"}
        if body.get("validation_file"):
            validation = {"kind": "dataset",
                          "dataset": _dataset(request.user, body["validation_file"], "validation_file")}
        suffix = body.get("suffix") or ""
        if not isinstance(suffix, str) or len(suffix) > 64:
            raise ApiError("suffix must be a string of at most 64 characters", param="suffix")
        config = job_config_from_request(body)
        try:
            job = services.job_create(owner=request.user, dataset=dataset, base_model=base, config=config,
                                      name=suffix, validation=validation)
        except ConfigError as exc:
            param = {"validation_dataset": "validation_file", "dataset": "training_file"}.get(
                exc.field, f"lora.{exc.field}")
            raise ApiError(f"{param}: {exc.message}", param=param) from None
        job = selectors.job_list(owner=request.user).select_related("owner").get(id=job.id)
        return Response(job_object(job))


class JobDetailApi(OpenAIView):
    @openai_schema("retrieveFineTuningJob", errors=(404,))
    def get(self, request, job_id):
        return Response(job_object(_job(request.user, job_id)))


class JobCancelApi(OpenAIView):
    @openai_schema("cancelFineTuningJob", errors=(400, 404))
    def post(self, request, job_id):
        services.job_cancel(job=_job(request.user, job_id), by=request.user)
        return Response(job_object(_job(request.user, job_id)))


class JobPauseApi(OpenAIView):
    @openai_schema("pauseFineTuningJob", errors=(400, 404))
    def post(self, request, job_id):
        services.job_pause(job=_job(request.user, job_id), by=request.user)
        return Response(job_object(_job(request.user, job_id)))


class JobResumeApi(OpenAIView):
    @openai_schema("resumeFineTuningJob", errors=(400, 404))
    def post(self, request, job_id):
        services.job_resume(job=_job(request.user, job_id), by=request.user)
        return Response(job_object(_job(request.user, job_id)))


def _event_level(kind: str) -> str:
    return "error" if kind in ("error", "failed") else "warn" if kind in ("warning", "warn") else "info"


def job_events(job: FineTuneJob) -> list[dict[str, Any]]:
    """Messages and one metrics event per step, newest first (as OpenAI lists them)."""
    items = [{"id": f"ftevent-m{e.id}", "object": "fine_tuning.job.event", "created_at": _unix(e.created),
              "level": _event_level(e.kind), "message": e.message, "data": {"kind": e.kind}, "type": "message",
              "_order": (e.created, 1, e.id)}
             for e in JobEvent.objects.filter(job=job)]
    for p in MetricPoint.objects.filter(job=job).order_by("step"):
        data = {"step": p.step, "total_steps": p.extra.get("total_steps", job.total_steps)}
        if p.train_loss is not None:
            data["train_loss"] = p.train_loss
        if p.eval_loss is not None:
            data["valid_loss"] = p.eval_loss
        items.append({"id": f"ftevent-s{p.step}", "object": "fine_tuning.job.event", "created_at": _unix(p.created),
                      "level": "info", "message": f"Step {p.step}/{data['total_steps']}: training loss="
                      f"{p.train_loss if p.train_loss is not None else 'n/a'}", "data": data, "type": "metrics",
                      "_order": (p.created, 0, p.step)})
    items.sort(key=lambda item: item.pop("_order"), reverse=True)
    return items


class JobEventsApi(OpenAIView):
    @openai_schema("listFineTuningEvents", errors=(400, 404), parameters=PAGE_PARAMS)
    def get(self, request, job_id):
        after, limit = _page_params(request)
        return Response(_page(job_events(_job(request.user, job_id)), after, limit))


class JobCheckpointsApi(OpenAIView):
    @openai_schema("listFineTuningJobCheckpoints", errors=(400, 404), parameters=PAGE_PARAMS)
    def get(self, request, job_id):
        _job(request.user, job_id)
        _page_params(request, 10)
        # Intermediate checkpoints are removed once a job ends; only the final adapter is kept.
        return Response({"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False})


# --- models --------------------------------------------------------------------------------

def _model_objects(owner) -> list[dict[str, Any]]:
    data = [{"id": b.name, "object": "model", "created": _unix(b.created), "owned_by": OWNED_BY}
            for b in selectors.base_model_list()]
    for job in selectors.job_list(owner=owner, status=JobStatus.SUCCEEDED).select_related("owner"):
        data.append({"id": fine_tuned_model(job), "object": "model", "created": _unix(job.finished or job.created),
                     "owned_by": f"user-{owner.id}", "root": job.base_model.name, "parent": job.base_model.name})
    return data


class ModelListApi(OpenAIView):
    @openai_schema("listModels")
    def get(self, request):
        return Response({"object": "list", "data": _model_objects(request.user)})


class ModelDetailApi(OpenAIView):
    @openai_schema("retrieveModel", errors=(404,))
    def get(self, request, model):
        for item in _model_objects(request.user):
            if item["id"] == model:
                return Response(item)
        raise ApiError(f"The model '{model}' does not exist", param="model", code="model_not_found", status=404)


def resolve_model(owner, name: str) -> tuple[BaseModel, FineTuneJob | None]:
    """A base model name or one of the owner's `ft:` ids -> (base model, job or None)."""
    if not isinstance(name, str) or not name:
        raise ApiError("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if name.startswith("ft:"):
        short = name.rsplit(":", 1)[-1]
        if re.fullmatch(r"[0-9a-f]{8}", short):
            for job in selectors.job_list(owner=owner, status=JobStatus.SUCCEEDED).filter(
                    id__startswith=short).select_related("owner", "adapter"):
                if fine_tuned_model(job) == name and hasattr(job, "adapter"):
                    return job.base_model, job
    else:
        base = selectors.base_model_list().filter(name=name).first()
        if base is not None:
            return base, None
    raise ApiError(f"The model '{name}' does not exist or you do not have access to it.", param="model",
                   code="model_not_found", status=404)


# --- chat completions ----------------------------------------------------------------------

CHAT_FIELDS = {"model": "a string", "messages": "an array", "stream": "a boolean", "temperature": "a decimal",
               "top_p": "a decimal", "max_tokens": "an integer", "max_completion_tokens": "an integer",
               "seed": "an integer", "n": "an integer", "stream_options": "an object", "user": "a string",
               "store": "a boolean", "metadata": "an object"}
ROLES = {"system", "developer", "user", "assistant"}


def _messages(value: Any) -> list[dict[str, str]]:
    if value is None:
        raise ApiError("Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
    if not value:
        raise ApiError("Invalid 'messages': empty array. Expected an array with minimum length 1.",
                       param="messages", code="empty_array")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}",
                           param=f"messages[{i}].role")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text is supported
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(f"messages[{i}].content: only text parts are supported",
                               param=f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        role = "system" if message["role"] == "developer" else message["role"]
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise ApiError("the last message must come from the user", param="messages")
    return out


def _generation(body: dict) -> GenerationConfig:
    values: dict[str, Any] = {}
    for name, target in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                         ("max_tokens", "max_new_tokens"), ("max_completion_tokens", "max_new_tokens")):
        if body.get(name) is not None:
            values[target] = body[name]
    if body.get("n") not in (None, 1):
        raise ApiError("n must be 1", param="n")
    try:
        return GenerationConfig(**values)
    except ConfigError as exc:
        param = {"max_new_tokens": "max_tokens"}.get(exc.field, exc.field)
        raise ApiError(f"{param}: {exc.message}", param=param) from None


def _authenticate(request):
    """The user of a Bearer API key, throttled per key; raises ApiError 401 / 429."""
    raw = api_key_from_header(request.headers.get("Authorization", ""))
    if not raw:
        raise missing_key_error()
    key = api_key_lookup(raw)
    if key is None:
        raise incorrect_key_error(raw)
    throttle = ApiKeyRateThrottle()
    if not throttle.allow_request(types.SimpleNamespace(auth=key), None):
        raise ApiError(f"Rate limit reached; retry in {throttle.wait() or 1:.0f}s.", code="rate_limit_exceeded",
                       status=429, type_="requests")
    return key.owner


def _prepare_chat(request, raw_body: bytes) -> dict[str, Any]:
    """Authenticate and validate a completion request; nothing is written yet."""
    user = _authenticate(request)
    try:
        body = json.loads(raw_body or b"")
    except (ValueError, UnicodeDecodeError):
        raise ApiError("We could not parse the JSON body of your request.", code="invalid_json") from None
    body = _known_fields(body, CHAT_FIELDS)
    stream = body.get("stream") or False
    base, job = resolve_model(user, body.get("model"))
    return {"user": user, "base": base, "job": job, "messages": _messages(body.get("messages")),
            "generation": _generation(body), "stream": stream, "model": body["model"],
            "include_usage": bool((body.get("stream_options") or {}).get("include_usage"))}


def chat_completion_create(*, owner, base: BaseModel, job: FineTuneJob | None, messages: list[dict],
                           generation: GenerationConfig, session_id: uuid.UUID | None = None) -> ChatAnswer:
    """Record one API completion and hand it to the infer queue on commit."""
    from jobs.tasks import chat_answer

    with transaction.atomic():
        session = ChatSession.objects.create(id=session_id or uuid.uuid4(), owner=owner, job=job, base_model=base)
        answer = ChatAnswer.objects.create(
            session=session, side=ChatAnswer.Side.ADAPTER if job else ChatAnswer.Side.BASE, job=job,
            prompt=messages[-1]["content"], messages=messages, settings=generation.__dict__)
        transaction.on_commit(lambda: chat_answer.delay(str(answer.id)))
    return answer


def _usage(base: BaseModel, messages: list[dict], text: str) -> dict[str, int]:
    """Token counts with the base model's tokenizer (no model is loaded); zeros if it cannot be read."""
    try:
        tok = selectors._tokenizer(base.path)
        prompt = len(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                             return_dict=True)["input_ids"])
        completion = len(tok(text, add_special_tokens=False)["input_ids"])
    except Exception:  # usage is informative; never fail a finished completion over it
        prompt = completion = 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _error_response(err: ApiError) -> JsonResponse:
    response = JsonResponse(error_body(err.message, param=err.param, code=err.code, type_=err.type),
                            status=err.status)
    if err.status == 401:
        response["WWW-Authenticate"] = "Bearer"
    return response


async def _answer_events(prepared: dict, holder: dict):
    """Follow the answer's channel: yields ("token", text), then ("done", text) or ("error", message).

    The answer is created and queued only once subscribed, so no token is published unseen."""

    @sync_to_async
    def replay():
        answer = chat_completion_create(owner=prepared["user"], base=prepared["base"], job=prepared["job"],
                                        messages=prepared["messages"], generation=prepared["generation"],
                                        session_id=prepared["session_id"])
        holder["answer"] = str(answer.id)
        return []

    def on_message(kind, data):
        if data.get("answer") != holder.get("answer"):
            return [], False
        if kind == "token":
            return [("token", data.get("text", ""))], False
        if kind == "done":
            return [("done", data.get("text", ""))], True
        if kind == "error":
            return [("error", data.get("error", "generation failed"))], True
        return [], False

    channel = events.chat_channel(prepared["session_id"])
    async for item in events.follow(channel, replay, on_message):
        if isinstance(item, tuple):
            yield item


@csrf_exempt  # Bearer keys only: no cookie is read, so there is nothing to forge
async def chat_completions(request):
    """POST /v1/chat/completions: answered by the infer worker; streamed as chunks or returned whole."""
    if request.method != "POST":
        response = _error_response(method_not_allowed_error(request))
        response["Allow"] = "POST"
        return response
    body = request.body
    try:
        prepared = await sync_to_async(_prepare_chat)(request, body)
    except ApiError as err:
        return _error_response(err)
    # The session id is chosen here so the view can subscribe before the answer exists.
    prepared["session_id"] = uuid.uuid4()
    holder: dict[str, Any] = {}
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = prepared["model"]
    timeout = settings.CHAT_COMPLETION_TIMEOUT

    if prepared["stream"]:
        return _stream_response(prepared, holder, completion_id, created, model, timeout)

    text, failure = "", None
    try:
        async with asyncio.timeout(timeout):
            async with contextlib.aclosing(_answer_events(prepared, holder)) as stream:
                async for kind, value in stream:
                    if kind == "done":
                        text = value
                    elif kind == "error":
                        failure = value
    except TimeoutError:
        return _error_response(ApiError(f"The model did not answer within {timeout}s", code="timeout", status=504,
                                        type_="server_error"))
    if failure is not None:
        return _error_response(ApiError(f"Generation failed: {failure}", code="generation_failed", status=500,
                                        type_="server_error"))
    usage = await sync_to_async(_usage)(prepared["base"], prepared["messages"], text)
    return JsonResponse({
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": usage})


def _chunk(completion_id: str, created: int, model: str, delta: dict, finish_reason: str | None = None,
           usage: dict | None = None) -> str:
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


def _stream_response(prepared, holder, completion_id, created, model, timeout) -> StreamingHttpResponse:
    async def generate():
        yield _chunk(completion_id, created, model, {"role": "assistant", "content": ""})
        sent = ""
        try:
            async with asyncio.timeout(timeout):
                async with contextlib.aclosing(_answer_events(prepared, holder)) as stream:
                    async for kind, value in stream:
                        if kind == "token":
                            sent += value
                            yield _chunk(completion_id, created, model, {"content": value})
                        elif kind == "done":
                            # The final text is the record: send whatever the live pieces missed.
                            if value.startswith(sent) and len(value) > len(sent):
                                yield _chunk(completion_id, created, model, {"content": value[len(sent):]})
                            yield _chunk(completion_id, created, model, {}, "stop")
                            if prepared["include_usage"]:
                                usage = await sync_to_async(_usage)(prepared["base"], prepared["messages"], value)
                                body = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                        "model": model, "choices": [], "usage": usage}
                                yield f"data: {json.dumps(body)}\n\n"
                        elif kind == "error":
                            yield f"data: {json.dumps(error_body(f'Generation failed: {value}', type_='server_error'))}\n\n"
        except TimeoutError:
            yield f"data: {json.dumps(error_body(f'The model did not answer within {timeout}s', type_='server_error', code='timeout'))}\n\n"
        yield "data: [DONE]\n\n"

    response = StreamingHttpResponse(generate(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
