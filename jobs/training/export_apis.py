"""REST API for a job's exports: `POST /api/v1/jobs/<id>/exports/` asks for one (merged safetensors, GGUF LoRA,
merged GGUF at a quantization), `GET` lists them with their status and download; `/merged/` is the merged export's
own address from before GGUF. Thin DRF views over jobs.training.services; every read is owner-filtered."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.common.rest import ZIP_FILE, StrictInput
from jobs.common.schema import error_responses
from jobs.training import selectors, services
from jobs.training.downloads import export_download, merged_download
from jobs.training.exports import export_download_url, export_status
from jobs.training.models import ExportFormat, JobExport


class ExportOutput(serializers.Serializer):
    id = serializers.IntegerField()
    format = serializers.ChoiceField(choices=ExportFormat.values)
    quantization = serializers.SerializerMethodField()
    status = serializers.SerializerMethodField()
    stage = serializers.CharField(help_text="what a running export is doing, in words")
    progress = serializers.FloatField(help_text="0 to 1")
    attempts = serializers.IntegerField()
    error = serializers.CharField(help_text="why a failed export failed, in plain words")
    size_bytes = serializers.IntegerField()
    created_at = serializers.DateTimeField(source="created")
    finished_at = serializers.DateTimeField(source="finished", allow_null=True)
    download = serializers.SerializerMethodField(help_text="the zip (the GGUF file(s) and an Ollama Modelfile)")

    def get_quantization(self, row) -> str | None:
        return row.quantization or None

    def get_status(self, row) -> str:
        return export_status(row)

    def get_download(self, row) -> str | None:
        return export_download_url(row)


class JobExportListApi(APIView):
    """GET: the job's exports. POST: ask for one (202 while it is made; 200 with the same one when it is ready)."""

    @extend_schema_serializer(component_name="ExportRequest")
    class InputSerializer(StrictInput):
        format = serializers.CharField(help_text="gguf-lora, gguf-merged or merged")
        quantization = serializers.CharField(
            required=False, allow_null=True, help_text="gguf-merged only: f16 (default), bf16, q8_0 or q4_k_m"
        )

    @extend_schema(responses={200: ExportOutput(many=True), **error_responses(404)})
    def get(self, request, job_id):
        return Response(ExportOutput(selectors.export_list(owner=request.user, job_id=job_id), many=True).data)

    @extend_schema(
        request=InputSerializer, responses={200: ExportOutput, 202: ExportOutput, **error_responses(400, 404, 409)}
    )
    def post(self, request, job_id):
        job = selectors.job_get(owner=request.user, job_id=job_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        row, _ = services.export_request(
            job=job,
            by=request.user,
            format=data.validated_data["format"],
            quantization=data.validated_data.get("quantization"),
        )
        ready = row.status == JobExport.Status.READY
        return Response(ExportOutput(row).data, status=status.HTTP_200_OK if ready else status.HTTP_202_ACCEPTED)


class JobExportApi(APIView):
    """GET: one export. DELETE: delete it to free storage (it can be made again from the adapter)."""

    @extend_schema(responses={200: ExportOutput, **error_responses(404)})
    def get(self, request, job_id, export_id):
        return Response(ExportOutput(selectors.export_get(owner=request.user, job_id=job_id, export_id=export_id)).data)

    @extend_schema(responses={204: None, **error_responses(404, 409)})
    def delete(self, request, job_id, export_id):
        row = selectors.export_get(owner=request.user, job_id=job_id, export_id=export_id)
        services.export_delete(export=row, by=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class JobExportDownloadApi(APIView):
    @extend_schema(responses={**ZIP_FILE, **error_responses(404)})
    def get(self, request, job_id, export_id):
        return export_download(selectors.export_get(owner=request.user, job_id=job_id, export_id=export_id))


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

    @extend_schema(responses={**ZIP_FILE, **error_responses(404)})
    def get(self, request, job_id):
        return merged_download(selectors.job_get(owner=request.user, job_id=job_id))

    @extend_schema(responses={204: None, **error_responses(404, 409)})
    def delete(self, request, job_id):
        """Delete the merged model to free storage (it can be exported again from the adapter)."""
        if not services.merged_export_delete(job=selectors.job_get(owner=request.user, job_id=job_id), by=request.user):
            raise Http404("no merged model to delete")
        return Response(status=status.HTTP_204_NO_CONTENT)
