"""REST API for accounts: the user's usage against their limits."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.accounts.limits import usage_of
from jobs.common.schema import error_responses


class UsageApi(APIView):
    """GET: each per-user limit with what you use of it."""

    @extend_schema_serializer(component_name="Usage")
    class OutputSerializer(serializers.Serializer):
        limit = serializers.CharField()
        label = serializers.CharField()  # type: ignore[assignment]  # a field named like Field.label (stubs)
        used = serializers.IntegerField()
        allowed = serializers.IntegerField()

    @extend_schema(responses={200: OutputSerializer(many=True), **error_responses()})
    def get(self, request):
        return Response(self.OutputSerializer(usage_of(request.user), many=True).data)
