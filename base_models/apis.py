"""REST API: the base models a job can train on."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from base_models import selectors
from common.schema import error_responses


class BaseModelListApi(APIView):
    @extend_schema_serializer(component_name="BaseModel")
    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        name = serializers.CharField()
        architecture = serializers.CharField()
        parameters = serializers.IntegerField()
        linear_modules = serializers.ListField(child=serializers.CharField())

    @extend_schema(responses={200: OutputSerializer(many=True), **error_responses()})
    def get(self, request):
        return Response(self.OutputSerializer(selectors.base_model_list(), many=True).data)
