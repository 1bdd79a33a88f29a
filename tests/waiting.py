"""The one way tests wait for something: `wait_until`.

    job = wait_until(lambda: api.get(f"/jobs/{job_id}/").json(), until=lambda j: j["status"] == "running",
                     timeout=60, what=f"job {job_id} to run", on_timeout=stack.logs)

It calls `check()` until what it returns is done, then returns that value. On timeout it fails the test
with an AssertionError that says what was awaited, for how long, the last value seen, and what
`on_timeout()` returns (a stack's logs, say). An exception from `check` ends the wait at once, unless
its class is in `ignore` (a connection refused while a server starts): then it counts as "not yet".
"""

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str = "the condition",
    until: Callable[[T], Any] | None = None,
    on_timeout: Callable[[], Any] | None = None,
    ignore: tuple[type[BaseException], ...] = (),
    sleep: Callable[[float], Any] = time.sleep,
) -> T:
    """Call `check()` every `interval` seconds until it returns a truthy value (or, given `until`, a value
    for which `until(value)` is truthy), and return that value; fail after `timeout` seconds.

    `check` is called at least once, and once more after the last sleep, so a condition met just
    before the timeout is not missed. `sleep` is how to pass the time between two calls
    (`page_sleep(page)` in a Playwright test, so that the page's events are handled meanwhile).
    """
    started = time.monotonic()
    while True:
        try:
            value = check()
        except ignore as error:
            last = error
        else:
            last = value
            if until(value) if until is not None else value:
                return value
        elapsed = time.monotonic() - started
        if elapsed >= timeout:
            raise AssertionError(_timeout_message(what, elapsed, timeout, last, on_timeout))
        sleep(max(0.0, min(interval, timeout - elapsed)))


def page_sleep(page) -> Callable[[float], None]:
    """A `sleep` for `wait_until` that lets a Playwright page handle its events (routes, dialogs) meanwhile."""
    return lambda seconds: page.wait_for_timeout(seconds * 1000)


def _timeout_message(what: str, elapsed: float, timeout: float, last: Any, on_timeout) -> str:
    if isinstance(last, BaseException):
        seen = f"the error {last!r}"
    else:
        seen = repr(last)
        if len(seen) > 2000:
            seen = seen[:2000] + f"... ({len(seen)} characters)"
    message = f"timed out after {elapsed:.1f} s (limit {timeout:g} s) waiting for {what}; last seen: {seen}"
    if on_timeout is not None:
        try:
            diagnostic = on_timeout()
        except Exception as error:  # noqa: BLE001 (the timeout is the failure to report, not the diagnostic's own trouble)
            diagnostic = f"(on_timeout failed: {error!r})"
        message += f"\n{diagnostic}"
    return message
