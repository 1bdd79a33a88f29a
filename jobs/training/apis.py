"""REST API for jobs: create, list, watch, act on, download and estimate; thin DRF views with nested
input/output serializers over the training services."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.base_models.selectors import base_model_find
from jobs.common.rest import CURSOR_PARAMS, ZIP_FILE, CursorPage, NewestFirstPagination, StrictInput
from jobs.common.schema import error_responses
from jobs.datasets.selectors import dataset_find
from jobs.training import selectors, services
from jobs.training import workers as train_workers
from jobs.training.claims import fair_order
from jobs.training.downloads import adapter_download
from jobs.training.models import JobStatus
from jobs.training.plan import JobPlan, job_plan
from worker.config import PRESETS, TrainConfig, setting_metadata
from worker.errors import InputError

_JSON_TYPES = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}


def setting_schema(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAPI schema of one TrainConfig setting, from its metadata: title, description, default, limits."""
    schema: dict[str, Any] = {"title": meta["label"], "description": meta["help"], "default": meta["default"]}
    if meta["type"] == "list":
        schema.update(type="array", items={"type": "string"}, default=list(meta["default"]))
    else:
        schema["type"] = _JSON_TYPES[meta["type"]]
    if meta["choices"] is not None:
        schema["enum"] = list(meta["choices"])
    if meta["min"] is not None:
        schema["minimum"] = meta["min"]
        if meta["min_exclusive"]:
            schema["exclusiveMinimum"] = True
    if meta["max"] is not None:
        schema["maximum"] = meta["max"]
    return schema


class TrainConfigSerializer(serializers.Serializer):
    """A job's settings; each one left out keeps its default. `preset` fills the values it defines first."""


class TrainConfigSchema(OpenApiSerializerExtension):
    """Describes `config` from TrainConfig's field metadata, the one source of each setting's help and limits."""

    target_class = TrainConfigSerializer

    def map_serializer(self, auto_schema, direction):
        properties = {
            "preset": {
                "type": "string",
                "enum": list(PRESETS),
                "description": "quick, balanced or quality: fills the values it defines; settings given next to it win",
            }
        }
        properties.update({name: setting_schema(meta) for name, meta in setting_metadata(TrainConfig).items()})
        return {
            "type": "object",
            "description": TrainConfigSerializer.__doc__,
            "properties": properties,
            "additionalProperties": False,
        }


@extend_schema_field(TrainConfigSerializer)
class TrainConfigField(serializers.DictField):
    """`config`: a JSON object that TrainConfig checks (so an error names the setting and its limits)."""


class JobOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    status = serializers.CharField()
    dataset = serializers.UUIDField(source="dataset_id", allow_null=True)
    dataset_name = serializers.CharField()
    validation = serializers.JSONField()
    grader = serializers.JSONField(help_text="reinforcement: the grader scoring the answers; null for other methods")
    base_model = serializers.UUIDField(source="base_model_id")
    config = serializers.JSONField()
    step = serializers.IntegerField()
    total_steps = serializers.IntegerField()
    final_loss = serializers.FloatField(allow_null=True)
    precision = serializers.CharField(
        help_text="the dtype the frozen base trained in (fp32, bf16, fp16), as the "
        "train worker resolved config.precision; empty before a run starts"
    )
    error = serializers.CharField()
    error_code = serializers.CharField(
        help_text="empty, or what kind of failure: out_of_memory, training_error, "
        "config_error, dataset_error, worker_lost, internal_error"
    )
    attempts = serializers.IntegerField()
    created = serializers.DateTimeField()
    finished = serializers.DateTimeField(allow_null=True)
    waiting_reason = serializers.SerializerMethodField(
        help_text="for a queued job, why it has not started, in one sentence: '3rd in the fair queue', "
        "'waits for a worker with 24 GB; the live ones have 16 GB', a running-jobs limit, or no "
        "train worker running; else empty"
    )
    waiting_for = serializers.SerializerMethodField(
        help_text="for a queued job that fits no live train worker: what it waits for (the same sentence as "
        "waiting_reason then); else empty"
    )

    def _live(self) -> list[dict]:
        root: Any = self.root  # one read of the live workers for a whole page, kept on the root serializer
        if not hasattr(root, "_live_workers"):
            root._live_workers = train_workers.live_workers()
        return root._live_workers

    def get_waiting_reason(self, job) -> str:
        if job.status != JobStatus.QUEUED:
            return ""
        root: Any = self.root
        if not hasattr(root, "_fair_order"):
            root._fair_order = fair_order()
        return selectors.job_wait_reason(job=job, live=self._live(), order=root._fair_order)

    def get_waiting_for(self, job) -> str:
        if job.status != JobStatus.QUEUED or not job.memory_mb:
            return ""
        return selectors.job_waiting_for(
            job=job, fleet=[(w["name"], train_workers.capacity_of(w)) for w in self._live()]
        )


class MetricEventOutput(serializers.Serializer):
    """One training step's metrics; extra engine metrics may appear as further keys."""

    step = serializers.IntegerField()
    epoch = serializers.FloatField()
    loss = serializers.FloatField(allow_null=True)
    eval_loss = serializers.FloatField(allow_null=True)
    lr = serializers.FloatField(allow_null=True)
    tokens_per_s = serializers.FloatField(allow_null=True)


class JobPage(CursorPage):
    results = JobOutput(many=True)


class PlanInput(StrictInput):
    """What a job is planned from: the estimate's body, and the job's less its name."""

    dataset = serializers.UUIDField()
    base_model = serializers.UUIDField()
    config = TrainConfigField(required=False, default=dict)
    validation = serializers.ChoiceField(choices=["none", "split", "dataset"], required=False, default="split")
    validation_percent = serializers.FloatField(required=False, default=10, min_value=0.1, max_value=90)
    validation_seed = serializers.IntegerField(required=False, default=42, min_value=0)
    validation_dataset = serializers.UUIDField(required=False)
    grader = serializers.JSONField(
        required=False,
        help_text="reinforcement only: the grader that scores each sampled answer, in OpenAI's shape "
        "(string_check, text_similarity, python, multi); see /api/v1/graders/validate",
    )


def _job_plan(request, serializer_class, *, refuse: bool) -> tuple[dict, JobPlan]:
    """A job (or estimate) request's validated values and its plan; a 400 naming the field for anything unknown
    or invalid (the plan's rules are those of every caller)."""
    data = serializer_class(data=request.data)
    data.is_valid(raise_exception=True)
    values = data.validated_data
    dataset = dataset_find(owner=request.user, dataset_id=values["dataset"])
    if dataset is None:
        raise InputError("dataset", "no such dataset")
    base = base_model_find(values["base_model"], owner=request.user)
    if base is None:
        raise InputError("base_model", "no such base model")
    other = None
    if values.get("validation_dataset") is not None:
        other = dataset_find(owner=request.user, dataset_id=values["validation_dataset"])
        if other is None:
            raise InputError("validation_dataset", "no such dataset")
    plan = job_plan(
        owner=request.user,
        dataset=dataset,
        base_model=base,
        config=TrainConfig.from_dict(values["config"]),
        validation=values["validation"],
        validation_percent=values["validation_percent"],
        validation_seed=values["validation_seed"],
        validation_dataset=other,
        refuse=refuse,
        grader=values.get("grader"),
    )
    return values, plan


class JobListApi(APIView):
    @extend_schema_serializer(component_name="JobCreate")
    class InputSerializer(PlanInput):
        name = serializers.CharField(required=False, allow_blank=True, max_length=200)

    @extend_schema(
        parameters=[
            OpenApiParameter("status", enum=JobStatus.values, required=False, description="only jobs in this status"),
            *CURSOR_PARAMS,
        ],
        responses={200: JobPage, **error_responses(400)},
        operation_id="api_v1_jobs_list",
    )
    def get(self, request):
        wanted = request.query_params.get("status")
        if wanted and wanted not in JobStatus.values:
            raise InputError("status", f"must be one of {', '.join(JobStatus.values)}")
        paginator = NewestFirstPagination()
        page = paginator.paginate_queryset(selectors.job_list(owner=request.user, status=wanted), request, view=self)
        return paginator.get_paginated_response(JobOutput(page, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: JobOutput, **error_responses(400)})
    def post(self, request):
        values, plan = _job_plan(request, self.InputSerializer, refuse=True)
        job = services.job_create(plan=plan, name=values.get("name", ""))
        return Response(JobOutput(job).data, status=status.HTTP_201_CREATED)


class JobDetailApi(APIView):
    @extend_schema(responses={200: JobOutput, **error_responses(404)})
    def get(self, request, job_id):
        return Response(JobOutput(selectors.job_get(owner=request.user, job_id=job_id)).data)

    @extend_schema(responses={204: None, **error_responses(404, 409)})
    def delete(self, request, job_id):
        """Delete an ended (or paused) job with its adapter, checkpoints, exports, chats and votes."""
        services.job_delete(job=selectors.job_get(owner=request.user, job_id=job_id), by=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class JobActionApi(APIView):
    """POST with no body: one state change of a job (the subclass names the service)."""

    @extend_schema(request=None, responses={200: JobOutput, **error_responses(404, 409)})
    def post(self, request, job_id):
        job = self.service(job=selectors.job_get(owner=request.user, job_id=job_id), by=request.user)
        return Response(JobOutput(job).data)


class JobCancelApi(JobActionApi):
    service = staticmethod(services.job_cancel)


class JobPauseApi(JobActionApi):
    service = staticmethod(services.job_pause)


class JobResumeApi(JobActionApi):
    service = staticmethod(services.job_resume)


class JobRetryApi(APIView):
    """A new job from a failed or cancelled one; optional `config` overrides (e.g. the OOM advice)."""

    @extend_schema_serializer(component_name="JobRetry")
    class InputSerializer(StrictInput):
        config = TrainConfigField(required=False)

    @extend_schema(request=InputSerializer, responses={201: JobOutput, **error_responses(400, 404, 409)})
    def post(self, request, job_id):
        job = selectors.job_get(owner=request.user, job_id=job_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        overrides = data.validated_data.get("config")
        config = TrainConfig.from_dict({**job.config, **overrides}) if overrides else None
        new = services.job_retry(job=job, by=request.user, config=config)
        return Response(JobOutput(new).data, status=status.HTTP_201_CREATED)


class JobMetricsApi(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("after", int, required=False, description="only steps after this one (default 0)")
        ],
        responses={200: MetricEventOutput(many=True), **error_responses(400, 404)},
    )
    def get(self, request, job_id):
        job = selectors.job_get(owner=request.user, job_id=job_id)
        try:
            after = int(request.query_params.get("after", 0))
        except ValueError:
            raise InputError("after", "must be an integer step") from None
        return Response([p.as_event() for p in selectors.metric_points(job=job, after_step=after)])


class JobAdapterApi(APIView):
    @extend_schema(responses={**ZIP_FILE, **error_responses(404)})
    def get(self, request, job_id):
        return adapter_download(selectors.job_get(owner=request.user, job_id=job_id))


class AdapterOutput(serializers.Serializer):
    id = serializers.UUIDField()
    job = serializers.UUIDField(source="job_id")
    job_name = serializers.CharField(source="job.name")
    base_model = serializers.CharField(source="job.base_model.name")
    size_bytes = serializers.IntegerField()
    sha256 = serializers.CharField()
    created = serializers.DateTimeField()
    download = serializers.SerializerMethodField()

    def get_download(self, adapter) -> str:
        return f"/api/v1/jobs/{adapter.job_id}/adapter/"


class AdapterListApi(APIView):
    @extend_schema(responses={200: AdapterOutput(many=True)})
    def get(self, request):
        return Response(AdapterOutput(selectors.adapter_list(owner=request.user), many=True).data)


class EstimateOutput(serializers.Serializer):
    trainable_params = serializers.IntegerField()
    total_params = serializers.IntegerField()
    trainable_percent = serializers.FloatField()
    adapter_mb = serializers.FloatField()
    memory_mb = serializers.FloatField()
    breakdown = serializers.DictField(child=serializers.FloatField())
    steps = serializers.IntegerField()
    seconds = serializers.FloatField(allow_null=True)
    fits = serializers.BooleanField()
    advice = serializers.ListField(child=serializers.CharField())
    targets = serializers.ListField(child=serializers.CharField())
    memory_limit_mb = serializers.FloatField(allow_null=True)
    lengths_known = serializers.BooleanField(
        help_text="false while the dataset's tokens are still being counted (lengths guessed from characters)"
    )
    advice_changes = serializers.ListField(
        child=serializers.DictField(),
        help_text="the advice again, each as {text, changes}: the config fields and values that apply it",
    )
    warnings = serializers.ListField(
        child=serializers.CharField(), help_text="e.g. how many examples max_seq_length cuts"
    )
    seconds_source = serializers.ChoiceField(
        choices=["measured", "calibrated"],
        allow_null=True,
        help_text="measured: this model's finished jobs; calibrated: this machine's measured speed; null: unknown",
    )


class EstimateApi(APIView):
    """Pre-flight estimate of a job (same body as creating one), without creating it."""

    @extend_schema_serializer(component_name="EstimateRequest")
    class InputSerializer(PlanInput):
        pass

    @extend_schema(request=InputSerializer, responses={200: EstimateOutput, **error_responses(400)})
    def post(self, request):
        """The job's plan without the refusal: `fits` false (with advice) rather than a 400 when it fits nowhere."""
        _, plan = _job_plan(request, self.InputSerializer, refuse=False)
        return Response(EstimateOutput(plan.estimate).data)


class WorkerJobOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()


class WorkerOutput(serializers.Serializer):
    name = serializers.CharField(required=False, help_text="the Celery worker's name (staff only)")
    host = serializers.CharField(required=False, help_text="staff only")
    device = serializers.ChoiceField(choices=["cpu", "cuda"])
    count = serializers.IntegerField(help_text="devices")
    memory_mb = serializers.FloatField(help_text="memory of each device")
    busy = serializers.BooleanField(help_text="whether it is training a job now")
    job = WorkerJobOutput(allow_null=True, help_text="the job it trains, only when it is yours")
    started = serializers.FloatField(allow_null=True, required=False, help_text="Unix time it started (staff only)")
    seen = serializers.FloatField(
        allow_null=True, required=False, help_text="Unix time of its last announcement (staff only)"
    )


class WaitingJobOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    reason = serializers.CharField(help_text="why it has not started (the job's waiting_reason)")


class WorkersApi(APIView):
    """The live train workers, with their devices, memory and current job (yours only), and why each of your
    queued jobs waits; staff also get the workers' names and hosts and the queue's length."""

    class OutputSerializer(serializers.Serializer):
        workers = WorkerOutput(many=True)
        queued_jobs = serializers.IntegerField(
            required=False, help_text="queued jobs of all users (the train queue's length; staff only)"
        )
        waiting = WaitingJobOutput(many=True, help_text="your queued jobs, oldest first")
        no_fit = serializers.ChoiceField(
            choices=["wait", "refuse"], help_text="ROUTING_NO_FIT: what happens to a job no live worker fits"
        )

    @extend_schema(responses={200: OutputSerializer}, operation_id="api_v1_workers_list")
    def get(self, request):
        return Response(self.OutputSerializer(selectors.worker_list(viewer=request.user)).data)
