"""The reporting protocol between the engine and whoever runs it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

# should_stop() returns None to go on, or "cancel" / "pause".
StopCheck = Callable[[], str | None]


class WorkLost(Exception):
    """Another worker owns this job now: stop at once and write nothing more."""


class Reporter(Protocol):
    """Where metric points and events go. Optional: `guard() -> None`, raising WorkLost once the job
    is no longer this worker's; the engine calls it right before every write to the output folder.
    Optional: `checkpoint_saved(folder) -> None`, called after each checkpoint is written whole (the
    web app copies it to the object store there). Optional: `precision(name) -> None`, told once the
    frozen base's dtype is chosen (fp32, bf16 or fp16)."""

    def log(self, step: int, metrics: dict[str, Any]) -> None: ...

    def event(self, kind: str, message: str) -> None: ...


def write_guard(reporter: Reporter) -> Callable[[], None]:
    """The reporter's `guard`, or a no-op for a reporter without one."""
    return getattr(reporter, "guard", _always_ours)


def _always_ours() -> None:
    return None


def checkpoint_hook(reporter: Reporter) -> Callable[[Path], None]:
    """The reporter's `checkpoint_saved`, or a no-op for a reporter without one."""
    return getattr(reporter, "checkpoint_saved", _nothing_to_do)


def _nothing_to_do(folder: Path) -> None:
    return None


def precision_hook(reporter: Reporter) -> Callable[[str], None]:
    """The reporter's `precision(name)` (the web app records the base's dtype on the job), or a no-op."""
    return getattr(reporter, "precision", _not_recorded)


def _not_recorded(name: str) -> None:
    return None


class MemoryReporter:
    """Keeps everything in lists: for tests, benchmarks and the CLI."""

    def __init__(self, echo: bool = False):
        self.points: list[tuple[int, dict[str, Any]]] = []
        self.events: list[tuple[str, str]] = []
        self.echo = echo

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.points.append((step, dict(metrics)))
        if self.echo:
            log.info("step %s %s", step, metrics)

    def event(self, kind: str, message: str) -> None:
        self.events.append((kind, message))
        if self.echo:
            log.info("%s: %s", kind, message)

    def guard(self) -> None:
        """The work is always ours: nothing else claims it."""

    def losses(self) -> dict[int, float]:
        return {step: m["loss"] for step, m in self.points if "loss" in m}


def never_stop() -> str | None:
    return None
