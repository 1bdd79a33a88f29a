import pytest

from tests.integration.stack import running_stack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_llama):
    with running_stack(tmp_path_factory.mktemp("browser-stack"), tiny_llama) as s:
        yield s
