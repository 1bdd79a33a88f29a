"""Property-based API tests: schemathesis generates requests from the app's own OpenAPI schema for
every /api/v1/ operation and checks that none is answered with a 5xx.

One plain test per operation drives schemathesis's Hypothesis strategies: the schemathesis pytest
plugin's lazy `from_fixture` loader does not run under pytest 9 (it reads `Function._nodeid`)."""

import zlib
from unittest import mock

import pytest
import schemathesis
from django.core.files.uploadedfile import SimpleUploadedFile
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from jobs.accounts.services import api_key_create
from jobs.datasets.services import dataset_create
from jobs.training.plan import job_plan
from jobs.training.services import job_create
from jobs.webhooks.services import webhook_create
from tests.factories import chat_jsonl
from webapp.wsgi import application
from worker.config import TrainConfig

EXAMPLES = settings(
    max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


@pytest.fixture
def owned(user, base_model):
    """Real ids of the test user's objects, so generated requests reach past the 404 of a random id."""
    ds = dataset_create(owner=user, upload=SimpleUploadedFile("colours.jsonl", chat_jsonl()), name="colours")
    job = job_create(plan=job_plan(owner=user, dataset=ds, base_model=base_model, config=TrainConfig()))
    hook = webhook_create(owner=user, url="https://example.com/hook")
    return {
        "dataset_id": str(ds.id),
        "job_id": str(job.id),
        "dataset": str(ds.id),
        "base_model": str(base_model.id),
        "webhook_id": hook.id,
    }


@pytest.fixture
def api_key(user):
    return api_key_create(owner=user, name="schemathesis")[1]


def api_v1_operations() -> list[tuple[str, str]]:
    """(method, path) of every /api/v1/ operation, from the same generator that serves /api/schema/."""
    paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]
    return [
        (method.upper(), path)
        for path, ops in paths.items()
        if path.startswith("/api/v1/")
        for method in ops
        if method in ("get", "post", "put", "patch", "delete")
    ]


@pytest.fixture(autouse=True)
def _no_training():
    # A generated job creation must not reach a broker or start training.
    with mock.patch("jobs.training.tasks.job_run.delay"):
        yield


@pytest.mark.parametrize(("method", "path"), api_v1_operations())
def test_no_operation_answers_a_server_error(method, path, api_key, owned):
    headers = {"Authorization": f"Bearer {api_key}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application, headers=headers)
    operation = schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @EXAMPLES
    @given(case=cases)
    def check(case):
        # Half the cases aim at the user's real objects, so the code behind the lookup runs too.
        if case.path_parameters and zlib.crc32(repr(sorted(case.path_parameters.items())).encode()) % 2 == 0:
            case.path_parameters.update({k: owned[k] for k in case.path_parameters if k in owned})
        if isinstance(case.body, dict) and method == "POST" and path == "/api/v1/jobs/":
            case.body.update({k: owned[k] for k in ("dataset", "base_model")})
        case.call_and_validate(headers=headers, checks=[not_a_server_error])

    check()
