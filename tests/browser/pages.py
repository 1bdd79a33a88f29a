"""Steps shared by the browser tests."""


def sign_in(page, stack, username: str) -> None:
    """Log in through the real form (the test users' passwords are pw-<name>-123)."""
    page.goto(stack.url + "/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"pw-{username}-123")
    page.click("button[type=submit]")
    page.wait_for_url("**/jobs/")
