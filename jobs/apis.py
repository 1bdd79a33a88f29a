"""REST API (Django REST framework): thin views with nested input/output serializers that call
the same services as the browser."""
from __future__ import annotations

from collections.abc import Mapping

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import FileResponse, Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field,
                                   extend_schema_serializer)
from rest_framework import serializers, status
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from jobs import selectors, services
from jobs.models import JobStatus
from jobs.schema import error_responses
from worker.config import ConfigError, TrainConfig
from worker.data import DatasetError


def exception_handler(exc, context):
    """Product errors become 4xx JSON naming the field (or file and line); never a 500 page."""
    if isinstance(exc, ConfigError):
        return Response({"error": {"field": exc.field, "message": exc.message}}, status=400)
    if isinstance(exc, DatasetError):
        return Response({"error": {"field": "file", "message": str(exc), "problems": exc.messages(),
                                   "total": exc.total}}, status=400)
    if isinstance(exc, services.JobStateError):
        return Response({"error": {"field": "status", "message": str(exc)}}, status=409)
    if isinstance(exc, services.ChatStateError):
        return Response({"error": {"field": exc.field, "message": exc.message}}, status=409)
    if isinstance(exc, services.DatasetInUse):
        return Response({"error": {"field": "dataset", "message": str(exc)}}, status=409)
    if isinstance(exc, services.MappingNeeded):
        return Response({"error": {"field": "mapping", "message": str(exc), "columns": exc.columns,
                                   "upload_token": exc.token, "filename": exc.filename}}, status=422)
    return drf_exception_handler(exc, context)


class StrictInput(serializers.Serializer):
    """An input serializer that refuses fields it does not know (DRF would ignore them silently), so a typo
    like `dataset_id` for `dataset` is a 400 naming the field rather than a default quietly used."""

    def to_internal_value(self, data):
        unknown = {}
        if isinstance(data, Mapping):
            allowed = ", ".join(name for name, f in self.fields.items() if not f.read_only)
            unknown = {str(name): [f"unknown field; allowed: {allowed}"] for name in data if name not in self.fields}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if isinstance(exc.detail, dict):
                exc.detail.update(unknown)
            raise
        if unknown:
            raise serializers.ValidationError(unknown)
        return value


class DatasetOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    original_name = serializers.CharField()
    format = serializers.CharField()
    schema = serializers.CharField()
    mapping = serializers.JSONField()
    rows = serializers.IntegerField()
    size_bytes = serializers.IntegerField()
    sha256 = serializers.CharField()
    stats = serializers.JSONField()
    created = serializers.DateTimeField()


BINARY_FILE = {(200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY, description="the file")}


class DatasetListApi(APIView):
    """GET: the user's datasets. POST (multipart): upload; 400 with located problems, or 422 with
    the columns and an upload_token when the columns need a mapping (then POST .../datasets/map/)."""

    parser_classes = [MultiPartParser]

    @extend_schema_serializer(component_name="DatasetUpload")
    class InputSerializer(StrictInput):
        file = serializers.FileField()
        name = serializers.CharField(required=False, allow_blank=True, max_length=200)
        drop_duplicates = serializers.BooleanField(required=False, default=False)
        mapping = serializers.JSONField(required=False)

    @extend_schema(responses={200: DatasetOutput(many=True), **error_responses()})
    def get(self, request):
        return Response(DatasetOutput(selectors.dataset_list(owner=request.user), many=True).data)

    @extend_schema(request=InputSerializer, responses={201: DatasetOutput, **error_responses(400, 409, 422)})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        ds = services.dataset_create(owner=request.user, upload=v["file"], name=v.get("name", ""),
                                     mapping=v.get("mapping") or None, drop_duplicates=v["drop_duplicates"])
        return Response(DatasetOutput(ds).data, status=status.HTTP_201_CREATED)


class DatasetMapApi(APIView):
    """POST: finish an upload that answered 422, with a column mapping."""

    @extend_schema_serializer(component_name="DatasetMapping")
    class InputSerializer(StrictInput):
        upload_token = serializers.CharField(max_length=64)
        filename = serializers.CharField(max_length=255)
        mapping = serializers.DictField(child=serializers.CharField())
        name = serializers.CharField(required=False, allow_blank=True, max_length=200)
        drop_duplicates = serializers.BooleanField(required=False, default=False)

    @extend_schema(request=InputSerializer, responses={201: DatasetOutput, **error_responses(400, 404, 409, 422)})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        ds = services.dataset_create_mapped(owner=request.user, token=v["upload_token"], filename=v["filename"],
                                            mapping=v["mapping"], name=v.get("name", ""),
                                            drop_duplicates=v["drop_duplicates"])
        return Response(DatasetOutput(ds).data, status=status.HTTP_201_CREATED)


class DatasetDetailApi(APIView):
    @extend_schema_serializer(component_name="DatasetRename")
    class RenameSerializer(StrictInput):
        name = serializers.CharField(max_length=200)

    @extend_schema(responses={200: DatasetOutput, **error_responses(404)})
    def get(self, request, dataset_id):
        return Response(DatasetOutput(selectors.dataset_get(owner=request.user, dataset_id=dataset_id)).data)

    @extend_schema(request=RenameSerializer, responses={200: DatasetOutput, **error_responses(400, 404)})
    def patch(self, request, dataset_id):
        ds = selectors.dataset_get(owner=request.user, dataset_id=dataset_id)
        data = self.RenameSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(DatasetOutput(services.dataset_rename(dataset=ds, name=data.validated_data["name"])).data)

    @extend_schema(responses={204: None, **error_responses(404, 409)})
    def delete(self, request, dataset_id):
        services.dataset_delete(dataset=selectors.dataset_get(owner=request.user, dataset_id=dataset_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class DatasetDownloadApi(APIView):
    @extend_schema(responses={**BINARY_FILE, **error_responses(404)})
    def get(self, request, dataset_id):
        ds = selectors.dataset_get(owner=request.user, dataset_id=dataset_id)
        return FileResponse(open(services.media_path(ds.file), "rb"), as_attachment=True,
                            filename=ds.original_name or "dataset")


class BaseModelListApi(APIView):
    @extend_schema_serializer(component_name="BaseModel")
    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        name = serializers.CharField()
        architecture = serializers.CharField()
        parameters = serializers.IntegerField()
        linear_modules = serializers.ListField(child=serializers.CharField())

    @extend_schema(responses={200: OutputSerializer(many=True), **error_responses()})
    def get(self, request):
        return Response(self.OutputSerializer(selectors.base_model_list(), many=True).data)


class JobOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    status = serializers.CharField()
    dataset = serializers.UUIDField(source="dataset_id", allow_null=True)
    dataset_name = serializers.CharField()
    validation = serializers.JSONField()
    base_model = serializers.UUIDField(source="base_model_id")
    config = serializers.JSONField()
    step = serializers.IntegerField()
    total_steps = serializers.IntegerField()
    final_loss = serializers.FloatField(allow_null=True)
    error = serializers.CharField()
    attempts = serializers.IntegerField()
    created = serializers.DateTimeField()
    finished = serializers.DateTimeField(allow_null=True)


class MetricEventOutput(serializers.Serializer):
    """One training step's metrics; extra engine metrics may appear as further keys."""

    step = serializers.IntegerField()
    epoch = serializers.FloatField()
    loss = serializers.FloatField(allow_null=True)
    eval_loss = serializers.FloatField(allow_null=True)
    lr = serializers.FloatField(allow_null=True)
    tokens_per_s = serializers.FloatField(allow_null=True)


class JobCursorPagination(CursorPagination):
    ordering = "-created"
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


CURSOR_PARAMS = [OpenApiParameter("cursor", str, required=False, description="from `next`"),
                 OpenApiParameter("page_size", int, required=False, description="1-100, default 20")]


class CursorPage(serializers.Serializer):
    """A page of a cursor-paginated list; subclasses add `results`."""

    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)


class JobPage(CursorPage):
    results = JobOutput(many=True)


class JobListApi(APIView):
    @extend_schema_serializer(component_name="JobCreate")
    class InputSerializer(StrictInput):
        name = serializers.CharField(required=False, allow_blank=True, max_length=200)
        dataset = serializers.UUIDField()
        base_model = serializers.UUIDField()
        config = serializers.DictField(required=False, default=dict)
        validation = serializers.ChoiceField(choices=["none", "split", "dataset"], required=False, default="split")
        validation_percent = serializers.FloatField(required=False, default=10, min_value=0.1, max_value=90)
        validation_seed = serializers.IntegerField(required=False, default=42, min_value=0)
        validation_dataset = serializers.UUIDField(required=False)

    @extend_schema(parameters=[OpenApiParameter("status", enum=JobStatus.values, required=False,
                                                description="only jobs in this status"), *CURSOR_PARAMS],
                   responses={200: JobPage, **error_responses(400)}, operation_id="api_v1_jobs_list")
    def get(self, request):
        wanted = request.query_params.get("status")
        if wanted and wanted not in JobStatus.values:
            raise ConfigError("status", f"must be one of {', '.join(JobStatus.values)}")
        paginator = JobCursorPagination()
        page = paginator.paginate_queryset(selectors.job_list(owner=request.user, status=wanted), request, view=self)
        return paginator.get_paginated_response(JobOutput(page, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: JobOutput, **error_responses(400)})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        try:
            dataset = selectors.dataset_get(owner=request.user, dataset_id=v["dataset"])
        except Http404:
            raise ConfigError("dataset", "no such dataset") from None
        base = selectors.base_model_list().filter(id=v["base_model"]).first()
        if base is None:
            raise ConfigError("base_model", "no such base model")
        config = TrainConfig.from_dict(v["config"])
        validation: dict = {"kind": v["validation"], "percent": v["validation_percent"], "seed": v["validation_seed"]}
        if v["validation"] == "dataset":
            other = selectors.dataset_list(owner=request.user).filter(id=v.get("validation_dataset")).first()
            if other is None:
                raise ConfigError("validation_dataset", "no such dataset")
            validation["dataset"] = other
        job = services.job_create(owner=request.user, dataset=dataset, base_model=base, config=config,
                                  name=v.get("name", ""), validation=validation)
        return Response(JobOutput(job).data, status=status.HTTP_201_CREATED)


class JobDetailApi(APIView):
    @extend_schema(responses={200: JobOutput, **error_responses(404)})
    def get(self, request, job_id):
        return Response(JobOutput(selectors.job_get(owner=request.user, job_id=job_id)).data)


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
        config = serializers.DictField(required=False)

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
    @extend_schema(parameters=[OpenApiParameter("after", int, required=False,
                                                description="only steps after this one (default 0)")],
                   responses={200: MetricEventOutput(many=True), **error_responses(400, 404)})
    def get(self, request, job_id):
        job = selectors.job_get(owner=request.user, job_id=job_id)
        try:
            after = int(request.query_params.get("after", 0))
        except ValueError:
            raise ConfigError("after", "must be an integer step") from None
        return Response([p.as_event() for p in selectors.metric_points(job=job, after_step=after)])


class JobAdapterApi(APIView):
    @extend_schema(responses={(200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY,
                                                                         description="the adapter zip"),
                              **error_responses(404)})
    def get(self, request, job_id):
        job = selectors.job_get(owner=request.user, job_id=job_id)
        adapter = getattr(job, "adapter", None)
        if adapter is None:
            raise Http404("this job has no adapter")
        return FileResponse(open(services.media_path(adapter.zip_file), "rb"), as_attachment=True,
                            filename=f"adapter-{job.short_id}.zip", content_type="application/zip")


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


class ModelIdentityOutput(serializers.Serializer):
    """Who answered: the base model alone, or a job's adapter (id is the base model's or the job's)."""

    kind = serializers.ChoiceField(choices=["base", "adapter"])
    id = serializers.UUIDField()
    name = serializers.CharField()


class ChatAnswerOutput(serializers.Serializer):
    id = serializers.UUIDField()
    side = serializers.SerializerMethodField(help_text="base or adapter; null while its blind round awaits a vote")
    model = serializers.SerializerMethodField(help_text="the model that answered; null while its blind round "
                                                        "awaits a vote")
    round = serializers.UUIDField(source="round_id", allow_null=True)
    position = serializers.IntegerField(help_text="column in its round, 0 = left")
    prompt = serializers.CharField()
    text = serializers.CharField()
    state = serializers.CharField()
    stopped = serializers.BooleanField(help_text="ended early by a stop request; text is what came before")
    created = serializers.DateTimeField()

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_side(self, answer) -> str | None:
        return None if selectors.answer_hidden(answer) else answer.side

    @extend_schema_field(ModelIdentityOutput(allow_null=True))
    def get_model(self, answer) -> dict | None:
        if selectors.answer_hidden(answer):
            return None
        session = answer.session
        base = session.job.base_model if session.job_id else session.base_model
        return selectors.model_identity(job=answer.job, base_model=base)


class ChatAskOutput(serializers.Serializer):
    session = serializers.UUIDField()
    round = serializers.UUIDField()
    blind = serializers.BooleanField()
    answers = ChatAnswerOutput(many=True, help_text="in screen order, left to right")


class JobChatApi(APIView):
    """POST a prompt for two or three models on the job's base (default: the base and the adapted model;
    `contestants` picks "base" and/or succeeded job ids; `blind` shuffles two models and hides them until
    the round's vote), answered by the infer worker; GET the session's answers.
    Live tokens: /chats/<session>/events/."""

    @extend_schema_serializer(component_name="ChatAsk")
    class InputSerializer(StrictInput):
        prompt = serializers.CharField(max_length=20000)
        session = serializers.UUIDField(required=False)
        max_new_tokens = serializers.IntegerField(required=False, min_value=1, max_value=4096)
        temperature = serializers.FloatField(required=False, min_value=0, max_value=5)
        top_p = serializers.FloatField(required=False, min_value=0.01, max_value=1)
        seed = serializers.IntegerField(required=False, min_value=0)
        system_prompt = serializers.CharField(required=False, allow_blank=True, max_length=20000)
        contestants = serializers.ListField(child=serializers.CharField(max_length=36), required=False,
                                            min_length=2, max_length=services.MAX_CONTESTANTS,
                                            help_text='"base" and/or ids of your succeeded jobs on the same base')
        blind = serializers.BooleanField(required=False, default=False)

    @extend_schema(request=InputSerializer, responses={201: ChatAskOutput, **error_responses(400, 404, 409)})
    def post(self, request, job_id):
        from worker.config import GenerationConfig

        job = selectors.job_get(owner=request.user, job_id=job_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = dict(data.validated_data)
        session = selectors.chat_session_get(owner=request.user, session_id=v.pop("session")) if "session" in v else None
        if session is not None and session.job_id != job.id:
            raise ConfigError("session", "that chat belongs to another job")
        prompt, contestants, blind = v.pop("prompt"), v.pop("contestants", None), v.pop("blind")
        session, answers = services.chat_ask(owner=request.user, job=job, prompt=prompt,
                                             generation=GenerationConfig(**v), session=session,
                                             contestants=contestants, blind=blind)
        return Response(ChatAskOutput({"session": session.id, "round": answers[0].round_id, "blind": blind,
                                       "answers": answers}).data, status=status.HTTP_201_CREATED)

    @extend_schema(parameters=[OpenApiParameter("session", str, required=True)],
                   responses={200: ChatAnswerOutput(many=True), **error_responses(404)})
    def get(self, request, job_id):
        job = selectors.job_get(owner=request.user, job_id=job_id)
        session_id = request.query_params.get("session", "")
        try:
            session = selectors.chat_session_get(owner=request.user, session_id=session_id)
        except (ValueError, DjangoValidationError):
            raise ConfigError("session", "must be a chat session id") from None
        if session.job_id != job.id:
            raise Http404("no such chat for this job")
        return Response(ChatAnswerOutput(selectors.chat_answers(session=session), many=True).data)


class ChatSlotOutput(serializers.Serializer):
    answer = serializers.UUIDField()
    position = serializers.IntegerField(help_text="column in its round, 0 = left")
    state = serializers.CharField()
    model = ModelIdentityOutput(allow_null=True, help_text="null while its blind round awaits a vote")


class ChatRoundVoteApi(APIView):
    """POST the owner's verdict on a finished two-model round, once: left, right, tie or both_bad.
    The vote is stored against the two models, not the screen sides; the answer names them."""

    @extend_schema_serializer(component_name="VoteCreate")
    class InputSerializer(StrictInput):
        choice = serializers.ChoiceField(choices=services.VOTE_CHOICES)

    @extend_schema_serializer(component_name="Vote")
    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        round = serializers.UUIDField(source="round_id")
        result = serializers.ChoiceField(choices=["first", "second", "tie", "both_bad"],
                                         help_text="first: first_model was better; second: second_model was")
        first_model = ModelIdentityOutput()
        second_model = ModelIdentityOutput()
        blind = serializers.BooleanField()
        created = serializers.DateTimeField()
        slots = ChatSlotOutput(many=True, help_text="the round's answers left to right, now named")

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer, **error_responses(400, 404, 409)})
    def post(self, request, round_id):
        chat_round = selectors.chat_round_get(owner=request.user, round_id=round_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        vote = services.chat_vote(owner=request.user, chat_round=chat_round, choice=data.validated_data["choice"])
        out = {"id": vote.id, "round_id": vote.round_id, "result": vote.result, "blind": vote.blind,
               "created": vote.created, "slots": selectors.chat_round_slots(chat_round=chat_round),
               "first_model": selectors.model_identity(job=vote.first_job, base_model=vote.base_model),
               "second_model": selectors.model_identity(job=vote.second_job, base_model=vote.base_model)}
        return Response(self.OutputSerializer(out).data, status=status.HTTP_201_CREATED)


class ChatStopApi(APIView):
    """The stop button: the chat's unfinished answers end at their next token (their text so far is
    kept, marked `stopped`); queued ones never start. Answers asked later are not affected."""

    @extend_schema_serializer(component_name="ChatStop")
    class OutputSerializer(serializers.Serializer):
        unfinished = serializers.IntegerField(help_text="answers that were still queued or streaming")

    @extend_schema(request=None, responses={200: OutputSerializer, **error_responses(404)})
    def post(self, request, session_id):
        session = selectors.chat_session_get(owner=request.user, session_id=session_id)
        unfinished = services.chat_stop(owner=request.user, session=session)
        return Response(self.OutputSerializer({"unfinished": unfinished}).data)


class WinRateApi(APIView):
    """The owner's votes, one row per pair of models: the model's wins, losses, ties and both-bad against
    its opponent, and its win rate = (wins + ½ × (ties + both bad)) / n with a 95% Wilson score interval."""

    @extend_schema_serializer(component_name="WinRate")
    class OutputSerializer(serializers.Serializer):
        model = ModelIdentityOutput()
        opponent = ModelIdentityOutput()
        wins = serializers.IntegerField()
        losses = serializers.IntegerField()
        ties = serializers.IntegerField()
        both_bad = serializers.IntegerField()
        n = serializers.IntegerField()
        win_rate = serializers.FloatField()
        ci_low = serializers.FloatField()
        ci_high = serializers.FloatField()

    @extend_schema(parameters=[OpenApiParameter("base_model", OpenApiTypes.UUID, required=False,
                                                description="only pairs on this base model")],
                   responses={200: OutputSerializer(many=True), **error_responses(400)})
    def get(self, request):
        base = None
        wanted = request.query_params.get("base_model")
        if wanted is not None:
            field = serializers.UUIDField()
            try:
                base = selectors.base_model_list().filter(id=field.to_internal_value(wanted)).first()
            except serializers.ValidationError:
                raise ConfigError("base_model", "must be a base model id") from None
            if base is None:
                raise ConfigError("base_model", "no such base model")
        return Response(self.OutputSerializer(selectors.vote_win_rates(owner=request.user, base_model=base),
                                              many=True).data)


class JobMergedApi(APIView):
    """POST: start the merged-model export (202 pending, 200 ready). GET: the zip once ready."""

    class StatusSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=["pending", "ready"])
        download = serializers.CharField(allow_null=True)

    def _status(self, job, state):
        return {"status": state, "download": f"/api/v1/jobs/{job.id}/merged/" if state == "ready" else None}

    @extend_schema(request=None, responses={200: StatusSerializer, 202: StatusSerializer, **error_responses(404, 409)})
    def post(self, request, job_id):
        job = selectors.job_get(owner=request.user, job_id=job_id)
        state = services.adapter_merge_request(job=job, by=request.user)
        return Response(self._status(job, state), status=200 if state == "ready" else 202)

    @extend_schema(responses={(200, "application/zip"): bytes, **error_responses(404)})
    def get(self, request, job_id):
        job = selectors.job_get(owner=request.user, job_id=job_id)
        if services.merged_status(job) != "ready":
            raise Http404("no merged model yet; POST to this address to make one")
        return FileResponse(open(services.merged_zip_path(job), "rb"), as_attachment=True,
                            filename=f"merged-{job.short_id}.zip", content_type="application/zip")


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


class EstimateApi(APIView):
    """Pre-flight estimate of a job (same body as creating one), without creating it."""

    @extend_schema_serializer(component_name="EstimateRequest")
    class InputSerializer(StrictInput):
        dataset = serializers.UUIDField()
        base_model = serializers.UUIDField()
        config = serializers.DictField(required=False, default=dict)

    @extend_schema(request=InputSerializer, responses={200: EstimateOutput, **error_responses(400)})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        dataset = selectors.dataset_list(owner=request.user).filter(id=v["dataset"]).first()
        if dataset is None:
            raise ConfigError("dataset", "no such dataset")
        base = selectors.base_model_list().filter(id=v["base_model"]).first()
        if base is None:
            raise ConfigError("base_model", "no such base model")
        config = TrainConfig.from_dict(v["config"])
        services.job_validate_config(base_model=base, config=config)
        est = services.job_estimate(owner=request.user, dataset=dataset, base_model=base, config=config)
        return Response(EstimateOutput(est).data)
