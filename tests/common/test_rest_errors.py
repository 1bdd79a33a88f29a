"""/api/v1/ errors: bad JSON, unknown fields, wrong types, unknown ids and unknown paths are JSON 4xx that
name the offending field (never a 500, an HTML page or a traceback)."""

import uuid

import pytest
from rest_framework.test import APIClient

from jobs.webhooks.services import webhook_create

ZERO = str(uuid.UUID(int=0))


def assert_rest_error(response, status, field=None):
    """JSON with the status; `field` is named either as a product error (`error.field`) or as DRF's key."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    text = response.content.decode()
    assert "<html" not in text.lower() and "Traceback" not in text
    body = response.json()
    if field is not None:
        named = body["error"]["field"] if isinstance(body.get("error"), dict) else None
        assert named == field or field in body, body
    return body


@pytest.fixture
def ids(user, base_model, dataset):
    hook = webhook_create(owner=user, url="https://example.com/hook")
    return {"dataset": str(dataset.id), "base_model": str(base_model.id), "webhook": hook.id}


def job_body(ids, **extra) -> dict:
    return {"dataset": ids["dataset"], "base_model": ids["base_model"], **extra}


def jsonb(data) -> dict:
    return {"data": data, "format": "json"}


def raw(data: bytes) -> dict:
    return {"data": data, "content_type": "application/json"}


# (method, path, kwargs (a callable of the ids), status, field named in the answer)
BAD_REQUESTS = [
    # bad JSON and bodies that are not objects
    ("post", "/api/v1/jobs/", lambda i: raw(b"{not json"), 400, None),
    ("post", "/api/v1/jobs/", lambda i: raw(b"[1, 2]"), 400, "non_field_errors"),
    ("post", "/api/v1/webhooks/", lambda i: raw(b'{"url": '), 400, None),
    ("post", "/api/v1/estimate/", lambda i: raw(b'"x"'), 400, "non_field_errors"),
    ("post", "/api/v1/datasets/", lambda i: jsonb({"name": "x"}), 415, None),
    # unknown fields
    ("post", "/api/v1/jobs/", lambda i: jsonb(job_body(i, colour="red")), 400, "colour"),
    (
        "post",
        "/api/v1/jobs/",
        lambda i: jsonb({"dataset_id": i["dataset"], "base_model": i["base_model"]}),
        400,
        "dataset_id",
    ),
    ("post", "/api/v1/jobs/", lambda i: jsonb(job_body(i, config={"rnk": 8})), 400, "rnk"),
    ("post", "/api/v1/estimate/", lambda i: jsonb(job_body(i, name="x")), 400, "name"),
    ("patch", "/api/v1/datasets/{dataset}/", lambda i: jsonb({"name": "x", "owner": 2}), 400, "owner"),
    (
        "post",
        "/api/v1/datasets/map/",
        lambda i: jsonb({"upload_token": "t", "filename": "f", "mapping": {}, "colour": 1}),
        400,
        "colour",
    ),
    ("post", "/api/v1/webhooks/", lambda i: jsonb({"url": "https://example.com", "active": False}), 400, "active"),
    # wrong types and values
    ("post", "/api/v1/jobs/", lambda i: jsonb({"dataset": 5, "base_model": i["base_model"]}), 400, "dataset"),
    ("post", "/api/v1/jobs/", lambda i: jsonb(job_body(i, config=[1])), 400, "config"),
    ("post", "/api/v1/jobs/", lambda i: jsonb(job_body(i, config={"rank": "eight"})), 400, "rank"),
    ("post", "/api/v1/jobs/", lambda i: jsonb(job_body(i, validation_percent="most")), 400, "validation_percent"),
    ("post", "/api/v1/jobs/", lambda i: jsonb(job_body(i, validation="all")), 400, "validation"),
    ("post", "/api/v1/estimate/", lambda i: jsonb(job_body(i, config="rank=8")), 400, "config"),
    ("patch", "/api/v1/datasets/{dataset}/", lambda i: jsonb({"name": ["x"]}), 400, "name"),
    ("post", "/api/v1/webhooks/", lambda i: jsonb({"url": 5}), 400, "url"),
    ("post", "/api/v1/webhooks/", lambda i: jsonb({"url": {"href": "https://example.com"}}), 400, "url"),
    # unknown ids (in the body they are a 400 naming the field; in the path a 404)
    ("post", "/api/v1/jobs/", lambda i: jsonb({"dataset": ZERO, "base_model": i["base_model"]}), 400, "dataset"),
    ("post", "/api/v1/jobs/", lambda i: jsonb({"dataset": i["dataset"], "base_model": ZERO}), 400, "base_model"),
    (
        "post",
        "/api/v1/jobs/",
        lambda i: jsonb(job_body(i, validation="dataset", validation_dataset=ZERO)),
        400,
        "validation_dataset",
    ),
    ("post", "/api/v1/estimate/", lambda i: jsonb({"dataset": ZERO, "base_model": i["base_model"]}), 400, "dataset"),
    ("get", f"/api/v1/jobs/{ZERO}/", lambda i: {}, 404, "detail"),
    ("post", f"/api/v1/jobs/{ZERO}/cancel/", lambda i: {}, 404, "detail"),
    ("get", f"/api/v1/datasets/{ZERO}/", lambda i: {}, 404, "detail"),
    ("get", "/api/v1/webhooks/999999/", lambda i: {}, 404, "detail"),
    ("get", "/api/v1/webhooks/99999999999999999999999/", lambda i: {}, 404, "detail"),
    # query parameters
    ("get", "/api/v1/jobs/?status=done", lambda i: {}, 400, "status"),
    ("get", "/api/v1/jobs/?cursor=garbage", lambda i: {}, 404, "detail"),
    ("get", "/api/v1/webhooks/{webhook}/deliveries/?cursor=garbage", lambda i: {}, 404, "detail"),
    # unknown paths and methods
    ("get", "/api/v1/nope/", lambda i: {}, 404, "detail"),
    ("post", "/api/v1/nope/", lambda i: jsonb({}), 404, "detail"),
    ("get", "/api/v1/jobs/not-a-uuid/", lambda i: {}, 404, "detail"),
    ("get", "/api/v1/webhooks/abc/", lambda i: {}, 404, "detail"),
    ("put", "/api/v1/jobs/", lambda i: jsonb({}), 405, "detail"),
    ("delete", "/api/v1/webhooks/", lambda i: {}, 405, "detail"),
    ("get", "/api/v1/webhooks/{webhook}/test/", lambda i: {}, 405, "detail"),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "field"),
    BAD_REQUESTS,
    ids=[f"{m} {p} -> {s} {f}" for m, p, _, s, f in BAD_REQUESTS],
)
def test_bad_requests_get_json_4xx_naming_the_field(api, ids, method, path, kwargs, status, field):
    response = getattr(api, method)(path.format(**ids), **kwargs(ids))
    assert_rest_error(response, status, field)


def test_a_path_without_its_trailing_slash_says_so(api):
    body = assert_rest_error(api.post("/api/v1/jobs", {}, format="json"), 404)
    assert "/api/v1/jobs/" in body["detail"] and "trailing slash" in body["detail"]
    assert "trailing slash" not in assert_rest_error(api.get("/api/v1/nope"), 404)["detail"]


def test_unknown_paths_are_json_for_anonymous_and_session_clients_too(user):
    assert_rest_error(APIClient().get("/api/v1/nope/"), 404)
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(user)
    # A session POST without a CSRF token to an unknown path is still the JSON 404, not the CSRF page.
    assert_rest_error(session.post("/api/v1/nope/", {}), 404)
    assert_rest_error(session.post("/v1/nope", {}), 404)
    page = session.get("/no-such-page/")  # outside the APIs, Django's own page stays
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")


def test_a_server_error_is_json_without_a_traceback(api):
    from unittest import mock

    api.raise_request_exception = False
    with mock.patch("jobs.base_models.selectors.base_model_list", side_effect=RuntimeError("boom")):
        response = api.get("/api/v1/base-models/")
    body = assert_rest_error(response, 500)
    assert "boom" not in body["detail"]
