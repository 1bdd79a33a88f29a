"""REST API for experiment tracking: the user's MLflow settings (/api/v1/account/tracking/) and how a job's
logging went (/api/v1/jobs/<id>/tracking/). The token is write-only."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.common.rest import StrictInput
from jobs.common.schema import error_responses
from jobs.tracking.selectors import tracker_settings
from jobs.tracking.services import mlflow_log_state, tracker_settings_update
from jobs.training.selectors import job_get


class TrackerSettingsOutput(serializers.Serializer):
    mlflow_uri = serializers.CharField(help_text="your MLflow tracking server; empty: the site default, if any")
    experiment = serializers.CharField(help_text="the MLflow experiment your jobs go to; empty: the site default")
    token_set = serializers.BooleanField(help_text="whether a token is stored (it is never shown)")
    enabled = serializers.BooleanField(help_text="false: your jobs are not logged anywhere")
    site_default_uri = serializers.CharField(help_text="the site's MLflow server, used when yours is empty")


class MlflowLogOutput(serializers.Serializer):
    state = serializers.CharField(help_text="pending (queued or waiting to retry), logged, or failed (gave up)")
    uri = serializers.CharField()
    experiment = serializers.CharField()
    run_id = serializers.CharField(help_text="the MLflow run; empty until it is made")
    attempts = serializers.IntegerField()
    error = serializers.CharField(help_text="why the last attempt failed (`connection refused`, `HTTP 503`, ...)")
    message = serializers.CharField(help_text="what the job page shows, e.g. `could not log to MLflow: timeout`")


class JobTrackingOutput(serializers.Serializer):
    mlflow = MlflowLogOutput(allow_null=True, help_text="null: the job is not logged to MLflow")


class TrackerSettingsApi(APIView):
    """GET: your experiment-tracking settings. PUT: set them (every finished job is then logged to MLflow)."""

    class InputSerializer(StrictInput):
        mlflow_uri = serializers.CharField(
            max_length=500, allow_blank=True, help_text="http(s) URL of an MLflow server on an allowed port"
        )
        experiment = serializers.CharField(max_length=200, allow_blank=True, required=False, default="")
        token = serializers.CharField(
            max_length=500, allow_blank=True, required=False, help_text="omit to keep the stored one; empty clears it"
        )
        enabled = serializers.BooleanField(required=False, default=True)

    @extend_schema(responses={200: TrackerSettingsOutput, **error_responses()})
    def get(self, request):
        return Response(TrackerSettingsOutput(tracker_settings(owner=request.user)).data)

    @extend_schema(request=InputSerializer, responses={200: TrackerSettingsOutput, **error_responses(400)})
    def put(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tracker_settings_update(owner=request.user, **data.validated_data)
        return Response(TrackerSettingsOutput(tracker_settings(owner=request.user)).data)


class JobTrackingApi(APIView):
    """GET: how the job's logging to MLflow went."""

    @extend_schema(responses={200: JobTrackingOutput, **error_responses(404)})
    def get(self, request, job_id):
        job = job_get(owner=request.user, job_id=job_id)
        return Response(JobTrackingOutput({"mlflow": mlflow_log_state(job=job)}).data)
