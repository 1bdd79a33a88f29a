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
    # A form post that checks an upload in a capped child process can take more than Playwright's 30 s to answer
    # on two cores shared with two other test workers (a click waits for the navigation it starts).
    context.set_default_timeout(60_000)
    context.set_default_navigation_timeout(90_000)
    page = context.new_page()
    yield page
    context.close()
