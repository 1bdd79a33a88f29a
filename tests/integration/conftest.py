import pytest

from tests.integration.stack import running_stack


# The end-to-end module runs on PostgreSQL with the real Redis; the product's default (SQLite with the embedded
# Redis) runs the same loop in the browser stack (tests/browser), the OpenAI end-to-end and most integration modules.
@pytest.fixture(scope="module", params=[("postgres", "real")], ids=["postgres+real-redis"])
def stack(request, tmp_path_factory, tiny_llama):
    database, redis = request.param
    with running_stack(tmp_path_factory.mktemp(f"stack-{database}"), tiny_llama, database=database, redis=redis) as s:
        yield s
