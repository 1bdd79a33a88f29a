"""REST API for webhooks (/api/v1/webhooks/): thin DRF views over jobs.webhooks.services.

A webhook's signing secret is returned only when it is made: on creation and on rotation."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.common.rest import CURSOR_PARAMS, CursorPage, NewestFirstPagination, StrictInput
from jobs.common.schema import error_responses
from jobs.webhooks import selectors
from jobs.webhooks.services import webhook_create, webhook_delete, webhook_ping, webhook_secret_rotate


class WebhookOutput(serializers.Serializer):
    id = serializers.IntegerField()
    url = serializers.URLField()
    active = serializers.BooleanField()
    created = serializers.DateTimeField()


class WebhookSecretOutput(WebhookOutput):
    secret = serializers.CharField(help_text="`whsec_...` signing secret; shown only in this answer, keep it")


class DeliveryOutput(serializers.Serializer):
    id = serializers.UUIDField()
    event = serializers.CharField(help_text="`ping` or `fine_tuning.job.<status>`")
    status = serializers.CharField(
        source="state", help_text="delivered, pending (queued or waiting to retry) or failed (gave up)"
    )
    attempts = serializers.IntegerField()
    response_code = serializers.IntegerField(
        source="status_code", allow_null=True, help_text="HTTP status of the last attempt; null if unreachable"
    )
    last_error = serializers.CharField(
        help_text="why the last attempt failed, as a category (`HTTP 503`, "
        "`timeout: ...`, `connection refused`, `TLS error`, "
        "`could not resolve host`, "
        "`refused: private address`, `refused: port not allowed`...); "
        "empty once delivered"
    )
    payload = serializers.JSONField(help_text="the signed body, as sent")
    created = serializers.DateTimeField()
    updated = serializers.DateTimeField()


class DeliveryPage(CursorPage):
    results = DeliveryOutput(many=True)


class WebhookListApi(APIView):
    """GET: your webhooks. POST: register an http(s) endpoint; the answer holds its signing secret."""

    @extend_schema_serializer(component_name="WebhookCreate")
    class InputSerializer(StrictInput):
        url = serializers.CharField(
            max_length=500,
            help_text="absolute http:// or https:// URL on an allowed port "
            "(80, 443, 8080, 8443 by default) that points to the "
            "public internet",
        )

    @extend_schema(responses={200: WebhookOutput(many=True), **error_responses()}, operation_id="api_v1_webhooks_list")
    def get(self, request):
        return Response(WebhookOutput(selectors.webhook_list(owner=request.user), many=True).data)

    @extend_schema(request=InputSerializer, responses={201: WebhookSecretOutput, **error_responses(400, 403)})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        webhook = webhook_create(owner=request.user, url=data.validated_data["url"])
        return Response(WebhookSecretOutput(webhook).data, status=status.HTTP_201_CREATED)


class WebhookDetailApi(APIView):
    @extend_schema(responses={200: WebhookOutput, **error_responses(404)})
    def get(self, request, webhook_id):
        return Response(WebhookOutput(selectors.webhook_get(owner=request.user, webhook_id=webhook_id)).data)

    @extend_schema(responses={204: None, **error_responses(403, 404)})
    def delete(self, request, webhook_id):
        webhook_delete(webhook=selectors.webhook_get(owner=request.user, webhook_id=webhook_id), by=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookDeliveryListApi(APIView):
    """GET: the webhook's deliveries, newest first, cursor-paginated."""

    @extend_schema(
        parameters=CURSOR_PARAMS,
        responses={200: DeliveryPage, **error_responses(404)},
        operation_id="api_v1_webhooks_deliveries_list",
    )
    def get(self, request, webhook_id):
        webhook = selectors.webhook_get(owner=request.user, webhook_id=webhook_id)
        paginator = NewestFirstPagination()
        page = paginator.paginate_queryset(selectors.webhook_deliveries(webhook=webhook), request, view=self)
        return paginator.get_paginated_response(DeliveryOutput(page, many=True).data)


class WebhookTestApi(APIView):
    """POST with no body: queue a signed `ping` event to the endpoint (202; one attempt); follow it in
    .../deliveries/. 429 with Retry-After while a ping to this webhook (or WEBHOOK_PINGS_IN_FLIGHT_PER_USER
    across yours) is still being sent."""

    @extend_schema(request=None, responses={202: DeliveryOutput, **error_responses(400, 403, 404, 429)})
    def post(self, request, webhook_id):
        delivery = webhook_ping(webhook=selectors.webhook_get(owner=request.user, webhook_id=webhook_id))
        return Response(DeliveryOutput(delivery).data, status=status.HTTP_202_ACCEPTED)


class WebhookSecretRotateApi(APIView):
    """POST with no body: replace the signing secret; the answer holds the new one (shown only here)."""

    @extend_schema(request=None, responses={200: WebhookSecretOutput, **error_responses(403, 404)})
    def post(self, request, webhook_id):
        webhook = selectors.webhook_get(owner=request.user, webhook_id=webhook_id)
        return Response(WebhookSecretOutput(webhook_secret_rotate(webhook=webhook)).data)
