"""REST API: the base models a job can train on (/api/v1/base-models/). Staff add shared models; with
USER_MODELS on, every user adds models private to them. A model from the Hub or a GGUF upload is prepared
by a background worker: poll its detail for `status` and `bytes_done` / `bytes_total`."""

from __future__ import annotations

from typing import cast

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.base_models import selectors, services
from jobs.base_models.models import ModelSource
from jobs.common.rest import SafeJSONParser, StrictInput
from jobs.common.schema import error_responses


@extend_schema_serializer(component_name="BaseModel")
class BaseModelOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    architecture = serializers.CharField()
    parameters = serializers.IntegerField()
    linear_modules = serializers.ListField(child=serializers.CharField())
    context_length = serializers.IntegerField(help_text="tokens the model attends to (0 until it is ready)")
    has_chat_template = serializers.BooleanField()
    source = serializers.ChoiceField(  # type: ignore[assignment]  # a field named like Field.source (stubs)
        choices=ModelSource.choices, help_text="folder, hub or gguf"
    )
    shared = serializers.BooleanField(help_text="true: visible to every user; false: private to you")
    status = serializers.CharField(help_text="queued, downloading, converting, ready or failed")
    error = serializers.CharField(help_text="why it failed, in plain words; empty otherwise")
    hub_id = serializers.CharField()
    revision = serializers.CharField(source="hub_revision")
    bytes_total = serializers.IntegerField()
    bytes_done = serializers.IntegerField()
    created = serializers.DateTimeField()


class JobRef(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    status = serializers.CharField()


@extend_schema_serializer(component_name="BaseModelDetail")
class BaseModelDetailOutput(BaseModelOutput):
    jobs = serializers.SerializerMethodField(help_text="your fine-tuning jobs on this model")
    jobs_total = serializers.SerializerMethodField(
        help_text="every user's jobs on this model (deletion is refused while there are any)"
    )

    def get_jobs(self, model) -> list[dict]:
        # many=True makes a ListSerializer, whose data is a list (the stubs type JobRef(...).data as a dict)
        return cast(
            "list[dict]", JobRef(selectors.jobs_using(owner=self.context["owner"], model=model)[:100], many=True).data
        )

    def get_jobs_total(self, model) -> int:
        return model.jobs.count()


class BaseModelListApi(APIView):
    """GET: the base models you may use (shared and your own), any status. POST: add one from the Hugging Face
    Hub (`source: hub`), a folder on the server (`source: folder`, staff), or a GGUF upload (`source: gguf`,
    multipart with `file`)."""

    parser_classes = [SafeJSONParser, FormParser, MultiPartParser]

    @extend_schema_serializer(component_name="BaseModelCreate")
    class InputSerializer(StrictInput):
        source = serializers.ChoiceField(choices=ModelSource.choices)  # type: ignore[assignment]  # see above
        name = serializers.CharField(
            max_length=200,
            required=False,
            allow_blank=True,
            help_text="unique; defaults to the Hub id or the GGUF file's name",
        )
        hub_id = serializers.CharField(
            max_length=200,
            required=False,
            allow_blank=True,
            help_text="source hub: e.g. HuggingFaceTB/SmolLM2-135M-Instruct",
        )
        revision = serializers.CharField(
            max_length=200,
            required=False,
            allow_blank=True,
            help_text="source hub: branch, tag or commit (default main)",
        )
        token = serializers.CharField(
            max_length=500,
            required=False,
            allow_blank=True,
            write_only=True,
            help_text="source hub: a Hub token for gated or private models; kept only until the download ends",
        )
        path = serializers.CharField(
            max_length=500,
            required=False,
            allow_blank=True,
            help_text="source folder (staff): absolute path of a model folder, or s3://BUCKET/PREFIX",
        )
        file = serializers.FileField(required=False, help_text="source gguf: the .gguf file")

    @extend_schema(
        responses={200: BaseModelOutput(many=True), **error_responses()}, operation_id="api_v1_base_models_list"
    )
    def get(self, request):
        models = selectors.base_model_list(owner=request.user, ready_only=False)
        return Response(BaseModelOutput(models, many=True).data)

    @extend_schema(
        request={"application/json": InputSerializer, "multipart/form-data": InputSerializer},
        responses={201: BaseModelOutput, 202: BaseModelOutput, **error_responses(400, 403)},
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        model = services.base_model_add(
            by=request.user,
            source=v["source"],
            name=v.get("name", ""),
            hub_id=v.get("hub_id", ""),
            revision=v.get("revision", ""),
            token=v.get("token", ""),
            path=v.get("path", ""),
            upload=v.get("file"),
        )
        code = status.HTTP_201_CREATED if model.status == "ready" else status.HTTP_202_ACCEPTED
        return Response(BaseModelOutput(model).data, status=code)


class BaseModelDetailApi(APIView):
    """GET: one model, its progress while it is prepared, and your jobs on it. DELETE: remove it (refused
    with 409 while any job uses it)."""

    @extend_schema(responses={200: BaseModelDetailOutput, **error_responses(404)})
    def get(self, request, model_id):
        model = selectors.base_model_get(owner=request.user, model_id=model_id)
        return Response(BaseModelDetailOutput(model, context={"owner": request.user}).data)

    @extend_schema(responses={204: None, **error_responses(403, 404, 409)})
    def delete(self, request, model_id):
        model = selectors.base_model_get(owner=request.user, model_id=model_id)
        services.base_model_delete(by=request.user, model=model)
        return Response(status=status.HTTP_204_NO_CONTENT)
