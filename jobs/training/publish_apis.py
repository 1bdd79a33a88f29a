"""REST API for pushing a job to the Hugging Face Hub: `POST /api/v1/jobs/<id>/publish/` queues a push of the
adapter or a ready export to a repository under the user's own token (used once, never kept or shown), `GET`
lists the job's pushes with their status, the repository's address once done and why one failed."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.common.rest import StrictInput
from jobs.common.schema import error_responses
from jobs.training import publish, selectors
from jobs.training.models import JobPublish


class PublishOutput(serializers.Serializer):
    id = serializers.IntegerField()
    repo_id = serializers.CharField()
    what = serializers.ChoiceField(choices=JobPublish.What.values)
    quantization = serializers.CharField(help_text="gguf-merged: the export's quantization")
    private = serializers.BooleanField()
    status = serializers.ChoiceField(choices=JobPublish.Status.values)
    url = serializers.CharField(allow_null=True, help_text="the repository on the Hub, once done")
    error = serializers.CharField(help_text="why a failed push failed, in plain words")
    created_at = serializers.DateTimeField(source="created")
    finished_at = serializers.DateTimeField(source="finished", allow_null=True)

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["url"] = data["url"] or None
        return data


class JobPublishApi(APIView):
    """GET: the job's pushes to the Hub. POST: push the adapter (or a ready export) to a Hub repository (202)."""

    @extend_schema_serializer(component_name="PublishRequest")
    class InputSerializer(StrictInput):
        repo_id = serializers.CharField(help_text="the Hub repository, your-name/my-adapter (made if missing)")
        token = serializers.CharField(
            write_only=True, help_text="your Hugging Face token with write access: used for this upload, never kept"
        )
        what = serializers.CharField(
            required=False, default="adapter", help_text="adapter, merged, gguf-lora or gguf-merged"
        )
        quantization = serializers.CharField(
            required=False, default="", allow_blank=True, help_text="gguf-merged: which export (f16 default)"
        )
        private = serializers.BooleanField(required=False, default=True)

    @extend_schema(responses={200: PublishOutput(many=True), **error_responses(404)})
    def get(self, request, job_id):
        return Response(PublishOutput(selectors.publish_list(owner=request.user, job_id=job_id), many=True).data)

    @extend_schema(request=InputSerializer, responses={202: PublishOutput, **error_responses(400, 404, 409)})
    def post(self, request, job_id):
        job = selectors.job_get(owner=request.user, job_id=job_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        row = publish.publish_request(job=job, by=request.user, **data.validated_data)
        row.refresh_from_db()
        return Response(PublishOutput(row).data, status=status.HTTP_202_ACCEPTED)
