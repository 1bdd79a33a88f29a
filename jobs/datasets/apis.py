"""REST API for datasets: thin DRF views with nested input serializers over the dataset services."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.base_models.selectors import base_model_find, base_model_list
from jobs.common.responses import file_download
from jobs.common.rest import BINARY_FILE, StrictInput
from jobs.common.schema import error_responses
from jobs.datasets import mapping as mapping_step
from jobs.datasets import selectors, services, token_profiles, uploads
from jobs.datasets.models import UploadCheck
from worker.errors import InputError


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


class UploadCheckOutput(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=UploadCheck.Status.choices)
    stage = serializers.CharField()
    rows = serializers.IntegerField()
    filename = serializers.CharField()
    size_bytes = serializers.IntegerField()
    problems = serializers.ListField(child=serializers.CharField())
    problem_total = serializers.IntegerField()
    columns = serializers.ListField(child=serializers.CharField())
    column_samples = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="a few short values of each column (needs_mapping)",
    )
    suggested_mapping = serializers.DictField(
        child=serializers.CharField(), help_text="roles guessed from the column names (needs_mapping)"
    )
    upload_token = serializers.CharField(allow_null=True, help_text="for POST .../datasets/map/ when needs_mapping")
    dataset = serializers.UUIDField(allow_null=True, help_text="the new dataset once ready")
    started = serializers.DateTimeField(allow_null=True)
    created = serializers.DateTimeField()


def _created(result) -> Response:
    """201 with the dataset, or 202 with the background check of a large upload (poll its address)."""
    if isinstance(result, UploadCheck):
        body = UploadCheckOutput(selectors.upload_check_json(result)).data
        return Response(
            body,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": reverse("api-upload-check", kwargs={"check_id": result.id})},
        )
    return Response(DatasetOutput(result).data, status=status.HTTP_201_CREATED)


class DatasetListApi(APIView):
    """GET: the user's datasets. POST (multipart): upload; 201 with the dataset, 400 with located
    problems, or 422 with the columns and an upload_token when the columns need a mapping (then POST
    .../datasets/map/). A file over DATASET_CHECK_INLINE_BYTES answers 202 with its background check
    (GET .../datasets/checks/{id}/ until it is ready, failed or needs_mapping)."""

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

    @extend_schema(
        request=InputSerializer,
        responses={201: DatasetOutput, 202: UploadCheckOutput, **error_responses(400, 409, 422)},
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        return _created(
            uploads.dataset_upload(
                owner=request.user,
                upload=v["file"],
                name=v.get("name", ""),
                mapping=v.get("mapping") or None,
                drop_duplicates=v["drop_duplicates"],
            )
        )


class DatasetMapApi(APIView):
    """POST: finish an upload that answered 422, with a column mapping."""

    @extend_schema_serializer(component_name="DatasetMapping")
    class InputSerializer(StrictInput):
        upload_token = serializers.CharField(max_length=64)
        filename = serializers.CharField(max_length=255)
        mapping = serializers.DictField(child=serializers.CharField())
        name = serializers.CharField(required=False, allow_blank=True, max_length=200)
        drop_duplicates = serializers.BooleanField(required=False, default=False)

    @extend_schema(
        request=InputSerializer,
        responses={201: DatasetOutput, 202: UploadCheckOutput, **error_responses(400, 404, 409, 422)},
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        return _created(
            mapping_step.dataset_create_mapped(
                owner=request.user,
                token=v["upload_token"],
                filename=v["filename"],
                mapping=v["mapping"],
                name=v.get("name", ""),
                drop_duplicates=v["drop_duplicates"],
            )
        )


class UploadCheckApi(APIView):
    """GET: a large upload's background check (status queued, checking, ready, failed or needs_mapping)."""

    @extend_schema(responses={200: UploadCheckOutput, **error_responses(404)})
    def get(self, request, check_id):
        return Response(
            UploadCheckOutput(
                selectors.upload_check_json(selectors.upload_check_get(owner=request.user, check_id=check_id))
            ).data
        )


class TokenReportOutput(serializers.Serializer):
    status = serializers.ChoiceField(choices=["pending", "ready", "failed"])
    done = serializers.IntegerField()
    total = serializers.IntegerField()
    error = serializers.CharField(allow_blank=True)
    max_length = serializers.IntegerField()
    lengths = serializers.ListField(
        child=serializers.IntegerField(),
        allow_null=True,
        help_text="every counted example's full token length (null until ready); for preference pairs, prompt + chosen",
    )
    rejected_lengths = serializers.ListField(
        child=serializers.IntegerField(),
        allow_null=True,
        help_text="preference pairs only: prompt + rejected, parallel to lengths (null otherwise)",
    )
    truncated = serializers.IntegerField(allow_null=True)
    trained_tokens = serializers.IntegerField(allow_null=True)


class DatasetTokensApi(APIView):
    """GET ?base_model=&max_length=: the dataset's token lengths under a base model's tokenizer, as on the
    check page. They are counted once per tokenizer by a background worker: `pending` until then. For prompts to
    reward, `max_answer_tokens` of the max length is left to the answers (`truncated` counts the longer prompts)."""

    @extend_schema_serializer(component_name="TokenReportQuery")
    class QuerySerializer(StrictInput):
        base_model = serializers.UUIDField(required=False)
        max_length = serializers.IntegerField(required=False, default=256, min_value=16, max_value=131072)
        max_answer_tokens = serializers.IntegerField(
            required=False, default=token_profiles.DEFAULT_ANSWER_TOKENS, min_value=1, max_value=4096
        )

    @extend_schema(parameters=[QuerySerializer], responses={200: TokenReportOutput, **error_responses(400, 404)})
    def get(self, request, dataset_id):
        ds = selectors.dataset_get(owner=request.user, dataset_id=dataset_id)
        query = self.QuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        chosen_id = query.validated_data.get("base_model")
        chosen = (
            base_model_find(chosen_id, owner=request.user) if chosen_id else base_model_list(owner=request.user).first()
        )
        if chosen is None:
            raise InputError("base_model", "unknown base model" if chosen_id else "no base model is registered yet")
        max_length = query.validated_data["max_length"]
        answer_tokens = query.validated_data["max_answer_tokens"] if ds.holds_prompts else 0
        report, profile = token_profiles.dataset_token_report(
            dataset=ds, model_path=chosen.path, max_length=max_length, answer_tokens=answer_tokens
        )
        return Response(
            TokenReportOutput(
                {
                    "status": profile.status,
                    "done": profile.done,
                    "total": profile.total,
                    "error": profile.error,
                    "max_length": max_length,
                    "lengths": report.lengths if report else None,
                    "rejected_lengths": report.rejected_lengths if report else None,
                    "truncated": report.truncated if report else None,
                    "trained_tokens": report.trained_tokens if report else None,
                }
            ).data
        )


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


class DatasetDeduplicateApi(APIView):
    """POST: a new dataset "<name> (deduplicated)" with each repeated example kept once; the original is
    unchanged. 201 with the new dataset, 200 with the copy made before, 409 when there are no duplicates."""

    @extend_schema(request=None, responses={200: DatasetOutput, 201: DatasetOutput, **error_responses(404, 409)})
    def post(self, request, dataset_id):
        ds = selectors.dataset_get(owner=request.user, dataset_id=dataset_id)
        made_before = selectors.dataset_deduplicated_copy(owner=request.user, dataset=ds) is not None
        copy = services.dataset_deduplicate(dataset=ds)
        return Response(DatasetOutput(copy).data, status=status.HTTP_200_OK if made_before else status.HTTP_201_CREATED)


class DatasetDownloadApi(APIView):
    @extend_schema(responses={**BINARY_FILE, **error_responses(404)})
    def get(self, request, dataset_id):
        ds = selectors.dataset_get(owner=request.user, dataset_id=dataset_id)
        return file_download(ds.file, filename=ds.original_name or "dataset")
