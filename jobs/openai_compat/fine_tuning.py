"""OpenAI's fine-tuning jobs API over the training services: create (OpenAI hyperparameters and the
`lora` extra onto a TrainConfig), list, retrieve, cancel / pause / resume, events and checkpoints."""

from __future__ import annotations

import dataclasses
from typing import Any

from drf_spectacular.types import OpenApiTypes
from rest_framework.response import Response

from jobs.base_models.models import BaseModel
from jobs.common.errors import OpenAIError
from jobs.common.ids import file_id, ftjob_id
from jobs.openai_compat.base import (
    PAGE_PARAMS,
    OpenAIView,
    known_fields,
    openai_schema,
    owned_dataset,
    owned_job,
    page,
    page_params,
    unix_time,
)
from jobs.training import selectors, services
from jobs.training.models import FineTuneJob, JobStatus
from jobs.training.plan import job_plan
from jobs.training.selectors import job_api_model as fine_tuned_model
from worker.config import ConfigError, TrainConfig, setting_metadata
from worker.errors import InputError

DEFAULT_LR = TrainConfig().learning_rate
# Where each setting sits in OpenAI's request, from TrainConfig's metadata: a hyperparameter, `seed`, the method's
# type or beta, or the `lora` extra (this product's settings OpenAI has no name for).
OPENAI_PARAMS = {name: meta["openai"] for name, meta in setting_metadata(TrainConfig).items() if meta["openai"]}
LORA_FIELDS = tuple(name for name, where in OPENAI_PARAMS.items() if where == "lora")
# OpenAI's hyperparameter name -> the setting (learning_rate_multiplier is scaled, see _hyper_to_config).
HYPER_SETTINGS = {
    where.rsplit(".", 1)[1]: name
    for name, where in OPENAI_PARAMS.items()
    if where.startswith(("hyperparameters.", "method.{method}.hyperparameters."))
}


def openai_param(field: str, method: str) -> str:
    """The OpenAI request parameter a TrainConfig setting comes from, as an error's `param` names it."""
    where = OPENAI_PARAMS.get(field, "lora")
    return f"lora.{field}" if where == "lora" else where.replace("{method}", method)


def _hyperparameters(config: dict) -> dict[str, Any]:
    return {
        "n_epochs": config.get("epochs"),
        "batch_size": config.get("batch_size"),
        "learning_rate_multiplier": round(config.get("learning_rate", DEFAULT_LR) / DEFAULT_LR, 6),
    }


def _method_object(config: dict, hyper: dict[str, Any], grader: dict | None = None) -> dict[str, Any]:
    """OpenAI's `method`: supervised, dpo with beta (and orpo, this product's extension, the same way), or
    reinforcement with its grader."""
    kind = config.get("method", "supervised")
    if kind == "supervised":
        return {"type": "supervised", "supervised": {"hyperparameters": hyper}}
    if kind == "reinforcement":
        return {
            "type": "reinforcement",
            "reinforcement": {
                "grader": grader,
                "hyperparameters": {
                    **hyper,
                    "eval_interval": config.get("eval_every") or "auto",
                    "eval_samples": 1,
                    "compute_multiplier": round(config.get("group_size", DEFAULT_GROUP) / DEFAULT_GROUP, 6),
                    "reasoning_effort": "default",
                },
            },
        }
    return {"type": kind, kind: {"hyperparameters": {**hyper, "beta": config.get("beta")}}}


# A running job asked to stop still runs until the worker sees the flag (within about 2 s); OpenAI's clients
# expect the requested state at once, so the OpenAI view shows it. The REST API and the pages keep the real one.
_REQUESTED_STATUS = {"cancel": JobStatus.CANCELLED, "pause": JobStatus.PAUSED, "prune": JobStatus.CANCELLED}


def openai_status(job: FineTuneJob) -> str:
    """The job's status as OpenAI names it: a running job with a stop request shows the state it is going to."""
    if job.status == JobStatus.RUNNING and job.stop_requested in _REQUESTED_STATUS:
        return _REQUESTED_STATUS[job.stop_requested]
    if job.status == JobStatus.PRUNED:  # a sweep's trial stopped early: OpenAI has no such status
        return JobStatus.CANCELLED
    return job.status


def job_object(job: FineTuneJob) -> dict[str, Any]:
    config = job.config or {}
    hyper = _hyperparameters(config)
    validation = job.validation or {}
    return {
        "id": ftjob_id(job.id),
        "object": "fine_tuning.job",
        "model": job.base_model.name,
        "created_at": unix_time(job.created),
        "finished_at": unix_time(job.finished),
        "fine_tuned_model": fine_tuned_model(job),
        "organization_id": f"user-{job.owner_id}",
        "result_files": [],
        "status": openai_status(job),
        "validation_file": file_id(validation["dataset"]) if validation.get("kind") == "dataset" else None,
        "training_file": file_id(job.dataset_id) if job.dataset_id else None,
        "hyperparameters": hyper,
        "method": _method_object(config, hyper, job.grader),
        "trained_tokens": None,
        "error": (
            {"code": "training_failed", "message": job.error, "param": None} if job.status == JobStatus.FAILED else None
        ),
        "seed": config.get("seed"),
        "estimated_finish": None,
        "integrations": [],
        "metadata": None,
        "suffix": job.name or None,
        "user_provided_suffix": job.name or None,
        "lora": {k: config.get(k) for k in LORA_FIELDS},
    }


def resolve_model(owner, name: object) -> tuple[BaseModel, FineTuneJob | None]:
    """A base model name or one of the owner's `ft:` ids -> (base model, job or None)."""
    if not isinstance(name, str) or not name:
        raise OpenAIError("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    found = selectors.model_named(owner=owner, name=name)
    if found is not None:
        return found
    raise OpenAIError(
        f"The model '{name}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
        status=404,
    )


JOB_FIELDS = {
    "model": "a string",
    "training_file": "a string",
    "validation_file": "a string",
    "suffix": "a string",
    "seed": "an integer",
    "hyperparameters": "an object",
    "method": "an object",
    "lora": "an object",
    "integrations": "an array",
    "metadata": "an object",
}
HYPER_FIELDS = {key for key, name in HYPER_SETTINGS.items() if OPENAI_PARAMS[name].startswith("hyperparameters.")}
METHOD_TYPES = ("supervised", "dpo", "orpo", "reinforcement")  # orpo: this product's extension, shaped like dpo
# Reinforcement's own hyperparameters in OpenAI's request: eval_interval is eval_every; compute_multiplier scales
# the answers tried per prompt (1.0 = the default group size); eval_samples (answers per validation prompt: one
# greedy answer here) and reasoning_effort (for reasoning models) are accepted at their defaults.
REINFORCEMENT_HYPER = {"eval_interval", "eval_samples", "compute_multiplier", "reasoning_effort"}
DEFAULT_GROUP = TrainConfig().group_size


def _hyper_to_config(hyper: Any, param: str, allowed: set[str] = HYPER_FIELDS) -> dict[str, Any]:
    if hyper is None:
        return {}
    if not isinstance(hyper, dict):
        raise OpenAIError(f"{param} must be an object", param=param)
    unknown = set(hyper) - allowed
    if unknown:
        raise OpenAIError(
            f"Unknown parameter: '{param}.{sorted(unknown)[0]}'",
            param=f"{param}.{sorted(unknown)[0]}",
            code="unknown_parameter",
        )
    out: dict[str, Any] = {}
    for key, value in hyper.items():
        if value == "auto" or value is None:
            continue
        if key == "learning_rate_multiplier":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise OpenAIError(
                    f"{param}.learning_rate_multiplier must be a positive number or 'auto'",
                    param=f"{param}.learning_rate_multiplier",
                )
            out["learning_rate"] = float(value) * DEFAULT_LR
        else:
            out[HYPER_SETTINGS[key]] = value
    return out


def config_error(exc: InputError, method: str) -> OpenAIError:
    """An InputError (TrainConfig's or the job plan's) as OpenAI's error, `param` the request parameter it
    names: the field's message as every other caller gets it."""
    param = {
        "config": "hyperparameters",
        "dataset": "training_file",
        "validation_dataset": "validation_file",
        "base_model": "model",
        "start_from": "model",
    }.get(exc.field) or openai_param(exc.field, method)
    if exc.field == "grader" or exc.field.startswith("grader."):
        param = f"method.reinforcement.{exc.field}"
    return OpenAIError(f"{param}: {exc.message}", param=param)


def _reinforcement_hyper(hyper: dict, param: str) -> dict[str, Any]:
    """Take reinforcement's own hyperparameters out of `hyper` (OpenAI's names) as settings."""
    out: dict[str, Any] = {}
    interval = hyper.pop("eval_interval", None)
    if interval not in (None, "auto"):
        out["eval_every"] = interval
    multiplier = hyper.pop("compute_multiplier", None)
    if multiplier not in (None, "auto"):
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or multiplier <= 0:
            raise OpenAIError(
                f"{param}.compute_multiplier must be a positive number", param=f"{param}.compute_multiplier"
            )
        out["group_size"] = max(2, round(DEFAULT_GROUP * multiplier))
    samples = hyper.pop("eval_samples", None)
    if samples not in (None, "auto", 1):
        raise OpenAIError(
            f"{param}.eval_samples: each validation prompt is answered once (greedily) here; leave it out or use 1",
            param=f"{param}.eval_samples",
        )
    effort = hyper.pop("reasoning_effort", None)
    if effort not in (None, "default"):
        raise OpenAIError(
            f"{param}.reasoning_effort applies to OpenAI's reasoning models; leave it out",
            param=f"{param}.reasoning_effort",
        )
    return out


def request_grader(body: dict) -> object:
    """The grader of a reinforcement request (`method.reinforcement.grader`), or None."""
    method = body.get("method")
    if isinstance(method, dict) and method.get("type") == "reinforcement":
        options = method.get("reinforcement")
        return options.get("grader") if isinstance(options, dict) else None
    return None


def job_config_from_request(body: dict) -> TrainConfig:
    """Map OpenAI hyperparameters (either form) and the `lora` extra onto a validated TrainConfig."""
    values = _hyper_to_config(body.get("hyperparameters"), "hyperparameters")
    method = body.get("method")
    if method is not None:
        if not isinstance(method, dict):
            raise OpenAIError("method must be an object", param="method")
        kind = method.get("type", "supervised")
        if kind not in METHOD_TYPES:
            raise OpenAIError(
                f"method.type must be one of {', '.join(METHOD_TYPES)}, got {kind!r}", param="method.type"
            )
        options = method.get(kind) or {}
        if not isinstance(options, dict):
            raise OpenAIError(f"method.{kind} must be an object", param=f"method.{kind}")
        allowed = HYPER_FIELDS | ({"beta"} if kind != "supervised" else set())
        hyper = options.get("hyperparameters")
        if kind == "reinforcement" and isinstance(hyper, dict):
            hyper = dict(hyper)
            values.update(_reinforcement_hyper(hyper, f"method.{kind}.hyperparameters"))
        values.update(_hyper_to_config(hyper, f"method.{kind}.hyperparameters", allowed))
        values["method"] = kind
    lora = body.get("lora") or {}
    if not isinstance(lora, dict):
        raise OpenAIError("lora must be an object", param="lora")
    unknown = set(lora) - set(LORA_FIELDS)
    if unknown:
        raise OpenAIError(
            f"Unknown parameter: 'lora.{sorted(unknown)[0]}'; allowed: {', '.join(LORA_FIELDS)}",
            param=f"lora.{sorted(unknown)[0]}",
            code="unknown_parameter",
        )
    values.update(lora)
    if body.get("seed") is not None:
        values["seed"] = body["seed"]
    try:
        return TrainConfig.from_dict(values)
    except ConfigError as exc:
        raise config_error(exc, values.get("method", "dpo")) from None
    except TypeError as exc:
        raise OpenAIError(str(exc), param="lora") from None


class JobListApi(OpenAIView):
    @openai_schema("listPaginatedFineTuningJobs", errors=(400, 404), parameters=PAGE_PARAMS)
    def get(self, request):
        after, limit = page_params(request)
        jobs = [job_object(j) for j in selectors.job_list(owner=request.user).select_related("owner")]
        return Response(page(jobs, after, limit))

    @openai_schema("createFineTuningJob", errors=(400, 404), request=OpenApiTypes.OBJECT)
    def post(self, request):
        body = known_fields(request.data, JOB_FIELDS)
        for required in ("model", "training_file"):
            if not body.get(required):
                raise OpenAIError(
                    f"Missing required parameter: '{required}'.", param=required, code="missing_required_parameter"
                )
        # A fine-tuned `ft:` model: the new job starts from that job's adapter (for DPO, its reference too).
        base, start = resolve_model(request.user, body["model"])
        dataset = owned_dataset(request.user, body["training_file"], "training_file")
        other = None
        if body.get("validation_file"):
            other = owned_dataset(request.user, body["validation_file"], "validation_file")
        suffix = body.get("suffix") or ""
        if not isinstance(suffix, str) or len(suffix) > 64:
            raise OpenAIError("suffix must be a string of at most 64 characters", param="suffix")
        config = job_config_from_request(body)
        if start is not None:
            config = dataclasses.replace(config, start_from=str(start.id))
        try:
            plan = job_plan(
                owner=request.user,
                dataset=dataset,
                base_model=base,
                config=config,
                validation_dataset=other,
                grader=request_grader(body),
            )
        except InputError as exc:
            raise config_error(exc, config.method) from None
        job = services.job_create(plan=plan, name=suffix, default_name=False)
        return Response(job_object(job))  # as created: a worker may already have claimed it since


class JobDetailApi(OpenAIView):
    @openai_schema("retrieveFineTuningJob", errors=(404,))
    def get(self, request, job_id):
        return Response(job_object(owned_job(request.user, job_id)))


def _job_action_view(service, operation_id: str) -> type[OpenAIView]:
    """POST: one state change of a job through `service`; answers the job as it is afterwards."""

    class JobActionApi(OpenAIView):
        @openai_schema(operation_id, errors=(400, 404))
        def post(self, request, job_id):
            service(job=owned_job(request.user, job_id), by=request.user)
            return Response(job_object(owned_job(request.user, job_id)))

    JobActionApi.__name__ = JobActionApi.__qualname__ = f"{operation_id[0].upper()}{operation_id[1:]}Api"
    return JobActionApi


JobCancelApi = _job_action_view(services.job_cancel, "cancelFineTuningJob")
JobPauseApi = _job_action_view(services.job_pause, "pauseFineTuningJob")
JobResumeApi = _job_action_view(services.job_resume, "resumeFineTuningJob")


def _event_level(kind: str) -> str:
    return "error" if kind in ("error", "failed") else "warn" if kind in ("warning", "warn") else "info"


# Reinforcement's step metrics as OpenAI's events name them (train_reward_mean, valid_reward_mean), with this
# product's others under their own names.
REWARD_EVENT_KEYS = {
    "reward": "train_reward_mean",
    "eval_reward": "valid_reward_mean",
    "reward_spread": "train_reward_spread",
    "kl": "kl",
    "answer_tokens": "mean_answer_tokens",
    "clipped": "clipped_fraction",
}


def _reward_metrics(extra: dict) -> dict[str, Any]:
    out = {name: extra[key] for key, name in REWARD_EVENT_KEYS.items() if extra.get(key) is not None}
    for key, value in extra.items():  # each named grader's part: reward/<name>, eval_reward/<name>
        if key.startswith(("reward/", "eval_reward/")) and value is not None:
            side, name = key.split("/", 1)
            out[f"{'train' if side == 'reward' else 'valid'}_reward_{name}"] = value
    return out


def job_event_list(job: FineTuneJob) -> list[dict[str, Any]]:
    """Messages and one metrics event per step, newest first (as OpenAI lists them)."""
    items: list[dict[str, Any]]
    items = [
        {
            "id": f"ftevent-m{e.id}",
            "object": "fine_tuning.job.event",
            "created_at": unix_time(e.created),
            "level": _event_level(e.kind),
            "message": e.message,
            "data": {"kind": e.kind},
            "type": "message",
            "_order": (e.created, 1, e.id),
        }
        for e in selectors.job_events(job=job)
    ]
    for p in selectors.metric_points(job=job):
        data = {"step": p.step, "total_steps": p.extra.get("total_steps", job.total_steps)}
        if p.train_loss is not None:
            data["train_loss"] = p.train_loss
        if p.eval_loss is not None:
            data["valid_loss"] = p.eval_loss
        data.update(_reward_metrics(p.extra))
        items.append(
            {
                "id": f"ftevent-s{p.step}",
                "object": "fine_tuning.job.event",
                "created_at": unix_time(p.created),
                "level": "info",
                "message": f"Step {p.step}/{data['total_steps']}: training loss="
                f"{p.train_loss if p.train_loss is not None else 'n/a'}",
                "data": data,
                "type": "metrics",
                "_order": (p.created, 0, p.step),
            }
        )
    items.sort(key=lambda item: item.pop("_order"), reverse=True)
    return items


class JobEventsApi(OpenAIView):
    @openai_schema("listFineTuningEvents", errors=(400, 404), parameters=PAGE_PARAMS)
    def get(self, request, job_id):
        after, limit = page_params(request)
        return Response(page(job_event_list(owned_job(request.user, job_id)), after, limit))


class JobCheckpointsApi(OpenAIView):
    @openai_schema("listFineTuningJobCheckpoints", errors=(400, 404), parameters=PAGE_PARAMS)
    def get(self, request, job_id):
        owned_job(request.user, job_id)
        page_params(request, 10)
        # Intermediate checkpoints are removed once a job ends; only the final adapter is kept.
        return Response({"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False})
