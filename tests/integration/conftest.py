import pytest

from tests.integration.stack import Stack


@pytest.fixture(scope="module", params=[("sqlite", "embedded"), ("postgres", "real")],
                ids=["sqlite+embedded-redis", "postgres+real-redis"])
def stack(request, tmp_path_factory, tiny_llama):
    database, redis = request.param
    s = Stack(tmp_path_factory.mktemp(f"stack-{database}"), database=database, redis=redis, model_dir=tiny_llama)
    try:
        s.start()
        yield s
    finally:
        s.stop()
