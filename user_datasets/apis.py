"""REST API for datasets: thin DRF views with nested input serializers over the dataset services."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from common.responses import file_download
from common.rest import BINARY_FILE, StrictInput
from common.schema import error_responses
from user_datasets import selectors, services


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
        return file_download(ds.file, filename=ds.original_name or "dataset")
