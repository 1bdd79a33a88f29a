"""Pieces every REST API view shares: strict input serializers, newest-first cursor pages and the
schema of a binary download."""

from __future__ import annotations

from collections.abc import Mapping

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers
from rest_framework.exceptions import ParseError
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import JSONParser


class StrictInput(serializers.Serializer):
    """An input serializer that refuses fields it does not know (DRF would ignore them silently), so a typo
    like `dataset_id` for `dataset` is a 400 naming the field rather than a default quietly used."""

    def to_internal_value(self, data):
        unknown = {}
        if isinstance(data, Mapping):
            allowed = ", ".join(name for name, f in self.fields.items() if not f.read_only)
            unknown = {str(name): [f"unknown field; allowed: {allowed}"] for name in data if name not in self.fields}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if isinstance(exc.detail, dict):
                exc.detail.update(unknown)
            raise
        if unknown:
            raise serializers.ValidationError(unknown)
        return value


class SafeJSONParser(JSONParser):
    """JSON bodies, with nesting too deep for Python's parser a 400 like any malformed body (not a 500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None


class NewestFirstPagination(CursorPagination):
    """Cursor pages of rows newest first (jobs, webhook deliveries)."""

    ordering = "-created"
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


CURSOR_PARAMS = [
    OpenApiParameter("cursor", str, required=False, description="from `next`"),
    OpenApiParameter("page_size", int, required=False, description="1-100, default 20"),
]


class CursorPage(serializers.Serializer):
    """A page of a cursor-paginated list; subclasses add `results`."""

    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)


BINARY_FILE = {(200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY, description="the file")}
ZIP_FILE = {(200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="the zip")}
