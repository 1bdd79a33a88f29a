"""OpenAI's Files API over the owner's datasets (`file-<hex>` ids, purpose fine-tune)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers
from rest_framework import status as http
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from jobs.common.errors import OpenAIError
from jobs.common.ids import file_id
from jobs.common.responses import file_download
from jobs.datasets import selectors, services
from jobs.datasets.models import Dataset
from jobs.openai_compat.base import OpenAIView, openai_schema, owned_dataset, unix_time


def file_object(ds: Dataset) -> dict[str, Any]:
    return {
        "id": file_id(ds.id),
        "object": "file",
        "bytes": ds.size_bytes,
        "created_at": unix_time(ds.created),
        "filename": ds.original_name or ds.name,
        "purpose": "fine-tune",
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


class FileListApi(OpenAIView):
    """GET: the user's files. POST (multipart file + purpose=fine-tune): upload and validate."""

    parser_classes = [MultiPartParser]

    @openai_schema("listFiles", parameters=[OpenApiParameter("purpose", str, required=False)])
    def get(self, request):
        purpose = request.query_params.get("purpose")
        data = (
            []
            if purpose and purpose != "fine-tune"
            else [file_object(d) for d in selectors.dataset_list(owner=request.user)]
        )
        return Response({"object": "list", "data": data, "has_more": False})

    @openai_schema(
        "createFile",
        errors=(400, 409),
        request=inline_serializer(
            "FileUpload", {"file": serializers.FileField(), "purpose": serializers.ChoiceField(["fine-tune"])}
        ),
    )
    def post(self, request):
        upload = request.FILES.get("file")
        if upload is None:
            raise OpenAIError("Missing the multipart field 'file'", param="file")
        purpose = request.data.get("purpose")
        if purpose != "fine-tune":
            raise OpenAIError(f"purpose must be 'fine-tune', got {purpose!r}", param="purpose")
        ds = services.dataset_create(owner=request.user, upload=upload, name=upload.name)
        return Response(file_object(ds), status=http.HTTP_200_OK)


class FileDetailApi(OpenAIView):
    @openai_schema("retrieveFile", errors=(404,))
    def get(self, request, file_id):
        return Response(file_object(owned_dataset(request.user, file_id, "file_id")))

    @openai_schema("deleteFile", errors=(404, 409))
    def delete(self, request, file_id):
        ds = owned_dataset(request.user, file_id, "file_id")
        services.dataset_delete(dataset=ds)
        return Response({"id": file_id, "object": "file", "deleted": True})


class FileContentApi(OpenAIView):
    @openai_schema("downloadFile", errors=(404,), response=OpenApiTypes.BINARY)
    def get(self, request, file_id):
        ds = owned_dataset(request.user, file_id, "file_id")
        return file_download(ds.file, filename=ds.original_name or "dataset", content_type="application/octet-stream")
