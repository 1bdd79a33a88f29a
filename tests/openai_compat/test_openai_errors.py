"""Every /v1/ error has OpenAI's body `{"error": {"message", "type", "param", "code"}}` and OpenAI's status.

What OpenAI answers (from its API and the openai clients): an unknown path is a 404 `unknown_url`; a
known path with the wrong method a 405 "Invalid method for URL (...)"; a missing or wrong key a 401
`invalid_request_error` (`invalid_api_key`); unparsable JSON, an unknown parameter (`unknown_parameter`)
or one of the wrong type (`invalid_type`, "Invalid type for 'x': expected ..., but got ... instead.") a
400 naming the parameter; an unknown id (or another user's) a 404; a request the job's state forbids a
400; too many requests a 429 of type `requests` with code `rate_limit_exceeded`."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from jobs.accounts.services import api_key_create
from jobs.base_models.models import BaseModel
from jobs.training.models import FineTuneJob, JobStatus
from worker.config import TrainConfig

ZERO_FILE = "file-" + "0" * 32
ZERO_JOB = "ftjob-" + "0" * 32


def assert_openai_error(response, status, *, param=None, code=None, type_="invalid_request_error"):
    """The exact OpenAI shape: JSON, four keys, a message, and the given status, type, param and code."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"], error
    assert (error["type"], error["param"], error["code"]) == (type_, param, code), error
    return error


@pytest.fixture
def owned(user, dataset):
    """One finished job and its file, owned by alice (no model is loaded: the base is only a row)."""
    base = BaseModel.objects.create(name="fake-base", path="/nonexistent")
    job = FineTuneJob.objects.create(
        owner=user, dataset=dataset, base_model=base, config=TrainConfig().to_dict(), status=JobStatus.SUCCEEDED
    )
    return {"file": f"file-{dataset.id.hex}", "job": f"ftjob-{job.id.hex}"}


def jsonb(data) -> dict:
    return {"data": data, "format": "json"}


def raw(data: bytes) -> dict:
    return {"data": data, "content_type": "application/json"}


# (method, path, request kwargs, status, param, code): {file} and {job} are alice's ids.
BAD_REQUESTS = [
    # unknown paths and wrong methods
    ("get", "/v1/nope", {}, 404, None, "unknown_url"),
    ("post", "/v1/fine_tuning/nope", jsonb({}), 404, None, "unknown_url"),
    ("get", "/v1/files/", {}, 404, None, "unknown_url"),
    ("get", "/v1/files/{file}/content/extra", {}, 404, None, "unknown_url"),
    ("put", "/v1/models", jsonb({}), 405, None, None),
    ("delete", "/v1/fine_tuning/jobs/{job}", {}, 405, None, None),
    ("post", "/v1/files/{file}/content", {}, 405, None, None),
    ("get", "/v1/chat/completions", {}, 405, None, None),
    # files
    ("post", "/v1/files", {"data": {"purpose": "fine-tune"}, "format": "multipart"}, 400, "file", None),
    ("post", "/v1/files", {"data": {"file": "x", "purpose": "batch"}, "format": "multipart"}, 400, "purpose", None),
    ("get", f"/v1/files/{ZERO_FILE}", {}, 404, "file_id", "file_not_found"),
    ("get", "/v1/files/nonsense", {}, 404, "file_id", "file_not_found"),
    ("get", "/v1/files/file-zz", {}, 404, "file_id", "file_not_found"),
    ("delete", f"/v1/files/{ZERO_FILE}", {}, 404, "file_id", "file_not_found"),
    ("get", f"/v1/files/{ZERO_FILE}/content", {}, 404, "file_id", "file_not_found"),
    # fine-tuning jobs: body
    ("post", "/v1/fine_tuning/jobs", raw(b"{not json"), 400, None, "invalid_json"),
    ("post", "/v1/fine_tuning/jobs", raw(b"[1, 2]"), 400, None, "invalid_type"),
    (
        "post",
        "/v1/fine_tuning/jobs",
        jsonb({"model": "fake-base", "training_file": "{file}", "colour": 1}),
        400,
        "colour",
        "unknown_parameter",
    ),
    ("post", "/v1/fine_tuning/jobs", jsonb({"model": 3, "training_file": "{file}"}), 400, "model", "invalid_type"),
    (
        "post",
        "/v1/fine_tuning/jobs",
        jsonb({"model": "fake-base", "training_file": ["{file}"]}),
        400,
        "training_file",
        "invalid_type",
    ),
    (
        "post",
        "/v1/fine_tuning/jobs",
        jsonb({"model": "fake-base", "training_file": "{file}", "seed": "7"}),
        400,
        "seed",
        "invalid_type",
    ),
    (
        "post",
        "/v1/fine_tuning/jobs",
        jsonb({"model": "fake-base", "training_file": "{file}", "seed": True}),
        400,
        "seed",
        "invalid_type",
    ),
    (
        "post",
        "/v1/fine_tuning/jobs",
        jsonb({"model": "fake-base", "training_file": "{file}", "hyperparameters": [1]}),
        400,
        "hyperparameters",
        "invalid_type",
    ),
    (
        "post",
        "/v1/fine_tuning/jobs",
        jsonb({"model": "fake-base", "training_file": "{file}", "lora": "big"}),
        400,
        "lora",
        "invalid_type",
    ),
    (
        "post",
        "/v1/fine_tuning/jobs",
        jsonb({"model": "fake-base", "training_file": "{file}", "suffix": 5}),
        400,
        "suffix",
        "invalid_type",
    ),
    ("post", "/v1/fine_tuning/jobs", jsonb({"training_file": "{file}"}), 400, "model", "missing_required_parameter"),
    ("post", "/v1/fine_tuning/jobs", jsonb({"model": "fake-base"}), 400, "training_file", "missing_required_parameter"),
    (
        "post",
        "/v1/fine_tuning/jobs",
        jsonb({"model": "gpt-4o", "training_file": "{file}"}),
        404,
        "model",
        "model_not_found",
    ),
    (
        "post",
        "/v1/fine_tuning/jobs",
        jsonb({"model": "fake-base", "training_file": ZERO_FILE}),
        404,
        "training_file",
        "file_not_found",
    ),
    (
        "post",
        "/v1/fine_tuning/jobs",
        jsonb({"model": "fake-base", "training_file": "{file}", "validation_file": "nonsense"}),
        404,
        "validation_file",
        "file_not_found",
    ),
    # fine-tuning jobs: ids, state, query parameters
    ("get", f"/v1/fine_tuning/jobs/{ZERO_JOB}", {}, 404, "fine_tuning_job_id", "not_found"),
    ("get", "/v1/fine_tuning/jobs/ftjob-nope", {}, 404, "fine_tuning_job_id", "not_found"),
    ("post", f"/v1/fine_tuning/jobs/{ZERO_JOB}/cancel", {}, 404, "fine_tuning_job_id", "not_found"),
    ("post", f"/v1/fine_tuning/jobs/{ZERO_JOB}/pause", {}, 404, "fine_tuning_job_id", "not_found"),
    ("post", f"/v1/fine_tuning/jobs/{ZERO_JOB}/resume", {}, 404, "fine_tuning_job_id", "not_found"),
    ("get", f"/v1/fine_tuning/jobs/{ZERO_JOB}/events", {}, 404, "fine_tuning_job_id", "not_found"),
    ("get", f"/v1/fine_tuning/jobs/{ZERO_JOB}/checkpoints", {}, 404, "fine_tuning_job_id", "not_found"),
    ("post", "/v1/fine_tuning/jobs/{job}/cancel", {}, 400, None, "invalid_state"),
    ("post", "/v1/fine_tuning/jobs/{job}/pause", {}, 400, None, "invalid_state"),
    ("post", "/v1/fine_tuning/jobs/{job}/resume", {}, 400, None, "invalid_state"),
    ("get", "/v1/fine_tuning/jobs?limit=0", {}, 400, "limit", None),
    ("get", "/v1/fine_tuning/jobs?limit=many", {}, 400, "limit", None),
    ("get", "/v1/fine_tuning/jobs?after=ftjob-x", {}, 404, "after", None),
    ("get", "/v1/fine_tuning/jobs/{job}/events?limit=101", {}, 400, "limit", None),
    ("get", "/v1/fine_tuning/jobs/{job}/checkpoints?limit=x", {}, 400, "limit", None),
    # models
    ("get", "/v1/models/gpt-4o", {}, 404, "model", "model_not_found"),
    ("get", "/v1/models/ft:fake-base:alice:00000000", {}, 404, "model", "model_not_found"),
    # chat completions
    ("post", "/v1/chat/completions", raw(b"{not json"), 400, None, "invalid_json"),
    ("post", "/v1/chat/completions", raw(b'"hello"'), 400, None, "invalid_type"),
    (
        "post",
        "/v1/chat/completions",
        jsonb({"model": "fake-base", "messages": [{"role": "user", "content": "hi"}], "functions": []}),
        400,
        "functions",
        "unknown_parameter",
    ),
    (
        "post",
        "/v1/chat/completions",
        jsonb({"model": "fake-base", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}),
        400,
        "temperature",
        "invalid_type",
    ),
    (
        "post",
        "/v1/chat/completions",
        jsonb({"model": "fake-base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1.5}),
        400,
        "max_tokens",
        "invalid_type",
    ),
    (
        "post",
        "/v1/chat/completions",
        jsonb({"model": "fake-base", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}),
        400,
        "stream",
        "invalid_type",
    ),
    (
        "post",
        "/v1/chat/completions",
        jsonb(
            {"model": "fake-base", "messages": [{"role": "user", "content": "hi"}], "stream_options": ["include_usage"]}
        ),
        400,
        "stream_options",
        "invalid_type",
    ),
    (
        "post",
        "/v1/chat/completions",
        jsonb({"model": "fake-base", "messages": {"role": "user"}}),
        400,
        "messages",
        "invalid_type",
    ),
    ("post", "/v1/chat/completions", jsonb({"model": "fake-base"}), 400, "messages", "missing_required_parameter"),
    ("post", "/v1/chat/completions", jsonb({"model": "fake-base", "messages": []}), 400, "messages", "empty_array"),
    (
        "post",
        "/v1/chat/completions",
        jsonb({"model": "fake-base", "messages": [{"role": "robot", "content": "x"}]}),
        400,
        "messages[0].role",
        None,
    ),
    (
        "post",
        "/v1/chat/completions",
        jsonb({"messages": [{"role": "user", "content": "hi"}]}),
        400,
        "model",
        "missing_required_parameter",
    ),
    (
        "post",
        "/v1/chat/completions",
        jsonb({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
        404,
        "model",
        "model_not_found",
    ),
    (
        "post",
        "/v1/chat/completions",
        jsonb({"model": "fake-base", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}),
        400,
        "temperature",
        None,
    ),
    (
        "post",
        "/v1/chat/completions",
        jsonb({"model": "fake-base", "messages": [{"role": "user", "content": "hi"}], "n": 2}),
        400,
        "n",
        None,
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "param", "code"),
    BAD_REQUESTS,
    ids=[f"{m} {p} -> {s} {c or prm}" for m, p, _, s, prm, c in BAD_REQUESTS],
)
def test_every_endpoint_answers_bad_input_with_openais_error(api, owned, method, path, kwargs, status, param, code):
    kwargs = dict(kwargs)
    if isinstance(kwargs.get("data"), dict):
        kwargs["data"] = {
            k: (
                v.format(**owned)
                if isinstance(v, str)
                else [x.format(**owned) for x in v]
                if isinstance(v, list) and v and isinstance(v[0], str)
                else v
            )
            for k, v in kwargs["data"].items()
        }
    if kwargs.get("format") == "multipart" and kwargs["data"].get("file") == "x":
        kwargs["data"]["file"] = SimpleUploadedFile("a.jsonl", b'{"messages": []}\n')
    response = getattr(api, method)(path.format(**owned), **kwargs)
    assert_openai_error(response, status, param=param, code=code)
    if status == 405:
        assert method.upper() in response.json()["error"]["message"] and method.upper() not in response["Allow"]


def test_another_users_ids_do_not_exist(api_bob, owned):
    for method, path, param, code in [
        ("get", "/v1/files/{file}", "file_id", "file_not_found"),
        ("get", "/v1/files/{file}/content", "file_id", "file_not_found"),
        ("delete", "/v1/files/{file}", "file_id", "file_not_found"),
        ("get", "/v1/fine_tuning/jobs/{job}", "fine_tuning_job_id", "not_found"),
        ("post", "/v1/fine_tuning/jobs/{job}/cancel", "fine_tuning_job_id", "not_found"),
        ("get", "/v1/fine_tuning/jobs/{job}/events", "fine_tuning_job_id", "not_found"),
        ("get", "/v1/fine_tuning/jobs/{job}/checkpoints", "fine_tuning_job_id", "not_found"),
    ]:
        assert_openai_error(getattr(api_bob, method)(path.format(**owned)), 404, param=param, code=code)
    job = FineTuneJob.objects.get()
    ft_model = f"ft:fake-base:alice:{job.short_id}"
    assert_openai_error(api_bob.get(f"/v1/models/{ft_model}"), 404, param="model", code="model_not_found")
    assert_openai_error(
        api_bob.post(
            "/v1/chat/completions", {"model": ft_model, "messages": [{"role": "user", "content": "hi"}]}, format="json"
        ),
        404,
        param="model",
        code="model_not_found",
    )
    response = api_bob.post(
        "/v1/fine_tuning/jobs", {"model": "fake-base", "training_file": owned["file"]}, format="json"
    )
    assert_openai_error(response, 404, param="training_file", code="file_not_found")


@pytest.mark.parametrize("path", ["/v1/models", "/v1/files", "/v1/fine_tuning/jobs", "/v1/chat/completions"])
def test_missing_and_wrong_keys_are_401(user, path):
    _, key = api_key_create(owner=user)
    method = "post" if path == "/v1/chat/completions" else "get"
    missing = getattr(APIClient(), method)(path)
    assert "didn't provide an API key" in assert_openai_error(missing, 401, code="invalid_api_key")["message"]
    assert missing["WWW-Authenticate"] == "Bearer"
    wrong = APIClient()
    wrong.credentials(HTTP_AUTHORIZATION=f"Bearer {key}x")
    message = assert_openai_error(getattr(wrong, method)(path), 401, code="invalid_api_key")["message"]
    assert message.startswith("Incorrect API key provided") and key not in message


def test_rate_limit_is_openais_429(user, settings):
    settings.API_THROTTLE_RATE = "1/min"
    _, key = api_key_create(owner=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get("/v1/models").status_code == 200
    for response in (client.get("/v1/models"), client.post("/v1/chat/completions", {}, format="json")):
        assert_openai_error(response, 429, code="rate_limit_exceeded", type_="requests")


def test_a_server_error_is_openai_shaped_json(api, settings):
    from unittest import mock

    settings.DEBUG_PROPAGATE_EXCEPTIONS = False
    api.raise_request_exception = False
    with mock.patch("jobs.openai_compat.model_catalog._model_objects", side_effect=RuntimeError("boom")):
        response = api.get("/v1/models")
    error = assert_openai_error(response, 500, type_="server_error")
    assert "boom" not in error["message"]


# --- the official client against a live server -------------------------------------------------


@pytest.fixture
def openai_client(live_server):
    """Makes `openai.OpenAI` clients for the live server and closes them after the test, so no kept-alive
    connection holds a server thread past it."""
    import openai

    clients = []

    def make(key: str):
        clients.append(openai.OpenAI(base_url=live_server.url + "/v1", api_key=key, max_retries=0, timeout=30))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.mark.django_db(transaction=True)
def test_the_openai_client_raises_its_own_exception_classes(openai_client, user, other_user, settings):
    import openai

    from jobs.datasets.services import dataset_create
    from tests.factories import chat_jsonl

    ds = dataset_create(owner=user, upload=SimpleUploadedFile("colours.jsonl", chat_jsonl()), name="colours")
    base = BaseModel.objects.create(name="fake-base", path="/nonexistent")
    done = FineTuneJob.objects.create(
        owner=user, dataset=ds, base_model=base, config=TrainConfig().to_dict(), status=JobStatus.SUCCEEDED
    )
    _, key = api_key_create(owner=user)
    client = openai_client(key)

    with pytest.raises(openai.NotFoundError) as err:
        client.files.retrieve(ZERO_FILE)
    assert err.value.code == "file_not_found" and err.value.param == "file_id"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-4o")
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as err:
        client.get("/nope", cast_to=object)
    assert err.value.code == "unknown_url" and err.value.type == "invalid_request_error"
    _, bobs_key = api_key_create(owner=other_user)
    bob = openai_client(bobs_key)
    with pytest.raises(openai.NotFoundError):
        bob.fine_tuning.jobs.retrieve(f"ftjob-{done.id.hex}")

    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.cancel(f"ftjob-{done.id.hex}")
    assert err.value.code == "invalid_state"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="fake-base", messages=[{"role": "user", "content": "hi"}], extra_body={"colour": "red"}
        )
    assert err.value.code == "unknown_parameter" and err.value.param == "colour"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="fake-base", training_file=f"file-{ds.id.hex}", seed="7")
    assert err.value.code == "invalid_type" and err.value.param == "seed"

    wrong = openai_client(key + "x")
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.models.list()
    assert err.value.code == "invalid_api_key"

    settings.API_THROTTLE_RATE = "1/min"
    with pytest.raises(openai.RateLimitError) as err:
        bob.models.list()
        bob.models.list()
    assert err.value.code == "rate_limit_exceeded"
