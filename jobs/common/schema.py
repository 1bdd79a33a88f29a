"""OpenAPI (drf-spectacular) pieces shared by the REST and OpenAI-style views: error bodies, the
Bearer API-key security scheme, and `error_responses(...)` for `@extend_schema(responses=...)`."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer
from drf_spectacular.views import SpectacularSwaggerView
from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer):
    field = serializers.CharField(help_text="the request field, query parameter or state the error is about")
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    """A product error (jobs.common.errors.rest_exception_handler): bad config, dataset problems, wrong state."""

    error = ErrorDetailSerializer()


class FieldErrorsSerializer(serializers.Serializer):
    """DRF's own input validation: each bad field with its messages (`{"name": ["..."]}`)."""


class FieldErrorsSchema(OpenApiSerializerExtension):
    target_class = FieldErrorsSerializer

    def map_serializer(self, auto_schema, direction):
        return {
            "type": "object",
            "description": FieldErrorsSerializer.__doc__,
            "additionalProperties": {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "object"}]},
        }


class DetailErrorSerializer(serializers.Serializer):
    """Not found, not authenticated, throttled or a disallowed method (DRF's `{"detail": ...}`)."""

    detail = serializers.CharField()


class OpenAIErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


class OpenAIErrorSerializer(serializers.Serializer):
    """OpenAI's error shape, used by every /v1/ route."""

    error = OpenAIErrorDetailSerializer()


BAD_REQUEST = PolymorphicProxySerializer(
    component_name="BadRequest", serializers=[ErrorSerializer, FieldErrorsSerializer], resource_type_field_name=None
)

_REST_ERRORS = {
    400: OpenApiResponse(
        BAD_REQUEST, description="invalid input: a product error naming the field, or DRF's per-field messages"
    ),
    401: OpenApiResponse(DetailErrorSerializer, description="missing, wrong or revoked credentials"),
    403: OpenApiResponse(DetailErrorSerializer, description="not allowed (e.g. a session request without CSRF)"),
    404: OpenApiResponse(DetailErrorSerializer, description="no such object for this user"),
    409: OpenApiResponse(ErrorSerializer, description="the object is in a state that forbids this"),
    422: OpenApiResponse(
        OpenApiTypes.OBJECT,
        description="the columns need a mapping: `error` has field, message, columns, upload_token and filename",
    ),
    429: OpenApiResponse(
        OpenApiTypes.OBJECT,
        description="too many requests for this API key (`detail`), or a "
        "per-user limit reached (`error` with field `quota`, "
        "limit, used and allowed)",
    ),
}


def error_responses(*codes: int) -> dict:
    """The REST API's documented error bodies for these status codes (401 and 429 always apply)."""
    return {code: _REST_ERRORS[code] for code in sorted({401, 429, *codes})}


def openai_error_responses(*codes: int) -> dict:
    """OpenAI-shaped error bodies for these status codes (401 and 429 always apply)."""
    return {code: OpenApiResponse(OpenAIErrorSerializer) for code in sorted({401, 429, *codes})}


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "jobs.accounts.auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "ls-... personal API key",
            "description": "A personal API key (Account > API keys) as `Authorization: Bearer ls-...`.",
        }


class ApiDocsView(SpectacularSwaggerView):
    """Swagger UI at /api/docs/ under the site's strict Content-Security-Policy: the page names only
    files on this server (no inline script or style, unlike drf-spectacular's own template)."""

    template_name = "common/api_docs.html"
