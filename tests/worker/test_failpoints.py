"""Failpoints do nothing unless named in the environment; named ones announce themselves and wait once."""

import time

from worker import failpoints


def test_failpoints_are_off_by_default_and_fire_once_when_named(monkeypatch, tmp_path):
    monkeypatch.delenv("LORA_STUDIO_FAILPOINTS", raising=False)
    started = time.monotonic()
    failpoints.failpoint("setup")
    assert time.monotonic() - started < 0.25 and not (tmp_path / "setup").exists()  # no 0.3 s hold
    monkeypatch.setenv("LORA_STUDIO_FAILPOINTS", "setup=0.3,save=0")
    monkeypatch.setenv("LORA_STUDIO_FAILPOINT_DIR", str(tmp_path))
    monkeypatch.setattr(failpoints, "_fired", set())
    started = time.monotonic()
    failpoints.failpoint("setup")
    assert time.monotonic() - started >= 0.3 and (tmp_path / "setup").read_text().isdigit()
    started = time.monotonic()
    failpoints.failpoint("setup")  # once per process: a resumed run is not held again
    failpoints.failpoint("evaluate")  # not named
    assert time.monotonic() - started < 0.25 and not (tmp_path / "evaluate").exists()  # not held again


def test_a_failpoint_can_strike_the_nth_time_it_is_reached(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_STUDIO_FAILPOINTS", "sample=0@3")
    monkeypatch.setenv("LORA_STUDIO_FAILPOINT_DIR", str(tmp_path))
    monkeypatch.setattr(failpoints, "_fired", set())
    monkeypatch.setattr(failpoints, "_reached", {})
    for _ in range(2):
        failpoints.failpoint("sample")
    assert not (tmp_path / "sample").exists()
    failpoints.failpoint("sample")
    assert (tmp_path / "sample").read_text().isdigit()
