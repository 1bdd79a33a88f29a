import pytest

from tests.integration.stack import running_stack


@pytest.fixture(
    scope="module",
    params=[("sqlite", "embedded"), ("postgres", "real")],
    ids=["sqlite+embedded-redis", "postgres+real-redis"],
)
def stack(request, tmp_path_factory, tiny_llama):
    database, redis = request.param
    with running_stack(tmp_path_factory.mktemp(f"stack-{database}"), tiny_llama, database=database, redis=redis) as s:
        yield s
