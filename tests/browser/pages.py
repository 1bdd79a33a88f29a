"""Steps shared by the browser tests."""


def sign_in(page, stack, username: str) -> None:
    """Log in through the real form (the test users' passwords are pw-<name>-123)."""
    page.goto(stack.url + "/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"pw-{username}-123")
    page.click("button[type=submit]")
    page.wait_for_url("**/jobs/")


def open_custom(page) -> None:
    """Open the job form's "Custom settings" with a click on its summary, clicking again if the section is still
    closed a few seconds later (once, on loaded cores, the fields under it stayed hidden after one click)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(3):
        page.click("#custom summary")
        try:
            page.wait_for_selector("#custom[open]", state="attached", timeout=5_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError('"Custom settings" did not open after three clicks on its summary')
