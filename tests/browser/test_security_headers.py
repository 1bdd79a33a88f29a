"""The strict Content-Security-Policy breaks no page in Chromium: Swagger UI at /api/docs/ renders and
no page logs a policy violation; repeated failed sign-ins show the lockout message."""
import pytest

from tests.browser.pages import sign_in

pytestmark = pytest.mark.browser


def csp_violations(page) -> list[str]:
    messages: list[str] = []
    page.on("console", lambda m: "Content Security Policy" in m.text and messages.append(m.text))
    return messages


def test_pages_and_swagger_ui_run_under_the_policy(stack, page):
    violations = csp_violations(page)
    sign_in(page, stack, "alice")
    for path in ("/datasets/", "/jobs/new/", "/account/keys/", "/account/webhooks/"):
        page.goto(stack.url + path)
        page.wait_for_load_state("networkidle")
    page.goto(stack.url + "/api/docs/")
    page.locator(".swagger-ui .info .title").get_by_text("LoRA Studio API").wait_for(timeout=20_000)
    page.locator(".opblock-summary-path", has_text="/api/v1/jobs/").first.wait_for()
    assert violations == []


def test_the_login_page_says_when_a_username_is_locked_out(stack, page):
    for _ in range(5):
        page.goto(stack.url + "/accounts/login/")
        page.fill("#id_username", "bob")
        page.fill("#id_password", "not-her-password")
        page.click("button[type=submit]")
    assert "Too many failed sign-ins" in page.inner_text("[role=alert]")
