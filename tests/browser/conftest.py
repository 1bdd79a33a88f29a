import pytest

from tests.integration.stack import running_stack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_llama):
    with running_stack(tmp_path_factory.mktemp("browser-stack"), tiny_llama) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, tmp_path):
    # wait_for_function evaluates its string in the page, which the site's Content-Security-Policy forbids
    # ('unsafe-eval'); test_security_headers.py drives pages with the policy enforced.
    context = browser.new_context(accept_downloads=True, bypass_csp=True)
    page = context.new_page()
    yield page
    context.close()
