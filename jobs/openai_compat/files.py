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
from jobs.common.ids import file_id, parse_public_id
from jobs.common.responses import file_download
from jobs.datasets import selectors, services, uploads
from jobs.datasets.models import Dataset, UploadCheck
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


def check_file_object(check: UploadCheck) -> dict[str, Any]:
    """An upload still with its check (a file over DATASET_CHECK_INLINE_BYTES) as OpenAI's File object: status
    uploaded until the background check ends, then error with the reasons; once checked it is the dataset
    of the same id (processed)."""
    failed = check.done
    details = "; ".join(check.problems[:3]) if failed else None
    return {
        "id": file_id(check.id),
        "object": "file",
        "bytes": check.size_bytes,
        "created_at": unix_time(check.created),
        "filename": check.filename,
        "purpose": "fine-tune",
        "status": "error" if failed else "uploaded",
        "status_details": details,
        "expires_at": None,
    }


def owned_file(owner, value: str) -> dict[str, Any]:
    """The File object of the owner's dataset or unfinished upload named by `value` (404 otherwise)."""
    pk = parse_public_id(value, "file-")
    check = selectors.upload_check_find(owner=owner, check_id=pk) if pk else None
    return check_file_object(check) if check else file_object(owned_dataset(owner, value, "file_id"))


class FileListApi(OpenAIView):
    """GET: the user's files (uploads still being checked too). POST (multipart file + purpose=fine-tune): a
    small file is checked during the request; a larger one (over DATASET_CHECK_INLINE_BYTES) is stored and
    checked by a background worker, its status `uploaded` until then."""

    parser_classes = [MultiPartParser]

    @openai_schema("listFiles", parameters=[OpenApiParameter("purpose", str, required=False)])
    def get(self, request):
        purpose = request.query_params.get("purpose")
        data = []
        if not purpose or purpose == "fine-tune":
            pending = selectors.upload_checks_pending(owner=request.user)
            data = [check_file_object(c) for c in pending] + [
                file_object(d) for d in selectors.dataset_list(owner=request.user)
            ]
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
        stored = uploads.dataset_upload(owner=request.user, upload=upload, name=upload.name)
        shown = check_file_object(stored) if isinstance(stored, UploadCheck) else file_object(stored)
        return Response(shown, status=http.HTTP_200_OK)


class FileDetailApi(OpenAIView):
    @openai_schema("retrieveFile", errors=(404,))
    def get(self, request, file_id):
        return Response(owned_file(request.user, file_id))

    @openai_schema("deleteFile", errors=(404, 409))
    def delete(self, request, file_id):
        pk = parse_public_id(file_id, "file-")
        check = selectors.upload_check_find(owner=request.user, check_id=pk) if pk else None
        if check is not None:
            uploads.upload_check_delete(check=check)
            return Response({"id": file_id, "object": "file", "deleted": True})
        ds = owned_dataset(request.user, file_id, "file_id")
        services.dataset_delete(dataset=ds)
        return Response({"id": file_id, "object": "file", "deleted": True})


class FileContentApi(OpenAIView):
    @openai_schema("downloadFile", errors=(404,), response=OpenApiTypes.BINARY)
    def get(self, request, file_id):
        ds = owned_dataset(request.user, file_id, "file_id")
        return file_download(ds.file, filename=ds.original_name or "dataset", content_type="application/octet-stream")
