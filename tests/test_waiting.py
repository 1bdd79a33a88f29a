"""wait_until, the tests' one way to wait: it returns what was awaited, fails with what it saw, and lets
errors through unless told to ignore them."""

import pytest

from tests.waiting import wait_until


def counter(values):
    """A check that returns these values one after another (then the last one for ever)."""
    values = list(values)
    calls = []

    def check():
        calls.append(1)
        return values[min(len(calls), len(values)) - 1]

    check.calls = calls
    return check


def test_returns_the_first_truthy_value_of_check():
    check = counter([None, 0, "", {"status": "running"}, "later"])
    assert wait_until(check, timeout=5, interval=0.001) == {"status": "running"}
    assert len(check.calls) == 4


def test_until_decides_when_the_value_is_done_and_the_value_is_returned():
    check = counter([{"workers": [1]}, {"workers": []}, {"workers": [1, 2]}])
    assert wait_until(check, until=lambda v: not v["workers"], timeout=5, interval=0.001) == {"workers": []}


def test_a_timeout_fails_with_what_the_time_the_last_value_and_the_diagnostic():
    slept = []
    with pytest.raises(AssertionError) as failure:
        wait_until(
            lambda: {"status": "queued"},
            until=lambda v: v["status"] == "running",
            timeout=0.1,
            interval=0.02,
            what="job 7 to run",
            on_timeout=lambda: "train.log: worker crashed",
            sleep=slept.append,
        )
    message = str(failure.value)
    assert "waiting for job 7 to run" in message and "limit 0.1 s" in message and "timed out after" in message
    assert "{'status': 'queued'}" in message and message.endswith("\ntrain.log: worker crashed")
    assert slept and all(0 <= s <= 0.02 for s in slept)


def test_the_last_sleep_ends_at_the_timeout_and_check_has_one_more_try():
    seen = []

    def check():
        seen.append(1)
        return len(seen) >= 3

    # A 10 s interval and a 0.15 s timeout: the one sleep is cut to 0.15 s, and a last try follows it.
    with pytest.raises(AssertionError):
        wait_until(lambda: seen.append(1), timeout=0.15, interval=10)
    assert len(seen) == 2
    seen.clear()
    assert wait_until(check, timeout=0.15, interval=0.05) is True


def test_an_exception_of_check_ends_the_wait_at_once():
    check = counter([None, "unused"])

    def failing():
        check()
        raise RuntimeError("web exited with 1")

    with pytest.raises(RuntimeError, match="web exited with 1"):
        wait_until(failing, timeout=5, interval=0.001)
    assert len(check.calls) == 1
    with pytest.raises(RuntimeError, match="web exited with 1"):  # ignoring others does not ignore it
        wait_until(failing, timeout=5, interval=0.001, ignore=(ConnectionError,))
    assert len(check.calls) == 2


def test_ignored_exceptions_count_as_not_yet_and_the_last_one_is_reported():
    check = counter([ConnectionError("refused"), ConnectionError("refused"), "up"])

    def connect():
        value = check()
        if isinstance(value, Exception):
            raise value
        return value

    assert wait_until(connect, timeout=5, interval=0.001, ignore=(ConnectionError,)) == "up"

    def never():
        raise ConnectionError("connection refused")

    with pytest.raises(
        AssertionError,
        match=r"waiting for the server to answer; last seen: the error "
        r"ConnectionError\('connection refused'\)",
    ):
        wait_until(never, timeout=0.05, interval=0.01, what="the server to answer", ignore=(ConnectionError,))


def test_a_failing_diagnostic_does_not_hide_the_timeout():
    def logs():
        raise OSError("no log file")

    with pytest.raises(AssertionError, match=r"(?s)waiting for logs.*on_timeout failed: OSError"):
        wait_until(lambda: False, timeout=0.01, interval=0.01, what="logs", on_timeout=logs)
