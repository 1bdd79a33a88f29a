"""The OpenAPI schema and its Swagger UI: who may read them, and that the schema is complete and valid."""

from django.core.management import call_command
from rest_framework.test import APIClient

from tests.factories import bearer_client


def test_schema_and_docs_need_a_login_or_an_api_key(user, client):
    client.force_login(user)
    anonymous = APIClient()
    assert anonymous.get("/api/schema/").status_code in (401, 403)
    assert anonymous.get("/api/docs/").status_code in (401, 403)
    assert client.get("/api/schema/").status_code == 200
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in html
    # Every script and stylesheet is served from here, none from a CDN (random tokens may spell "cdn").
    import re

    external = re.findall(r'(?:src|href)="(https?:)?//[^"]+"', html)
    assert external == [], external
    assert bearer_client(user).get("/api/schema/?format=json").status_code == 200


def test_every_rest_route_is_described_with_its_errors(user):
    schema = bearer_client(user).get("/api/schema/?format=json").json()
    paths = schema["paths"]
    from webapp.urls import api_v1

    drf_routes = [p for group in api_v1 for p in group.url_patterns if hasattr(p.callback, "cls")]
    assert len([p for p in paths if p.startswith("/api/v1/")]) == len(drf_routes)
    assert paths["/api/v1/jobs/"]["post"]["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BadRequest"
    }
    assert paths["/api/v1/jobs/{job_id}/cancel/"]["post"]["responses"]["409"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/Error"}
    webhook = paths["/api/v1/webhooks/{webhook_id}/test/"]["post"]["responses"]
    assert {"202", "400", "401", "403", "404", "429"} <= set(webhook)
    assert "400" in paths["/api/v1/webhooks/"]["post"]["responses"]
    assert "secret" in schema["components"]["schemas"]["WebhookSecretOutput"]["properties"]
    assert "/v1/fine_tuning/jobs" in paths  # the OpenAI-compatible routes are DRF views too
    assert set(schema["components"]["securitySchemes"]) == {"apiKey", "cookieAuth"}
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


def test_schema_validates_without_warnings(db, tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
