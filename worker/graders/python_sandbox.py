"""Running a user's python grader: `PythonSandbox(source)` keeps one capped child process
(`worker/graders/python_child.py`, started with `python -I`) and scores samples through it.

Each call has a wall-clock limit here and a CPU-time limit in the child; the child's address space, file
sizes and open files are capped, it has no network and sees no files but its temporary folder. A grader
that crashes, hangs, runs out of memory or returns a non-number scores 0 for that sample with the reason
(`SandboxScore.error`); a child that died is started again for the next call. Nothing but JSON crosses.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from worker.failpoints import failpoint

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("python_child.py")
MAX_ANSWER_BYTES = 64 * 1024
POLL_S = 0.2  # while a grader runs, `between` (the stop check) is called this often


@dataclass(frozen=True)
class SandboxLimits:
    """Per call: `seconds` of wall clock and `cpu_seconds` of CPU; per process: `memory_mb` of address space."""

    seconds: float = 5.0
    cpu_seconds: int = 2
    memory_mb: int = 512
    start_seconds: float = 10.0


@dataclass(frozen=True)
class SandboxScore:
    """One call's result: `score` (0.0 when the call failed) and `error` (None, or why it scored 0)."""

    score: float
    error: str | None = None
    seconds: float = 0.0


class GraderSourceError(ValueError):
    """The grader's source cannot be used (a syntax error, no grade function, a failure at import)."""


class PythonSandbox:
    """A python grader's capped child; use as a context manager so the child is always ended."""

    def __init__(self, source: str, limits: SandboxLimits | None = None) -> None:
        self.source = source
        self.limits = limits or SandboxLimits()
        self.child: subprocess.Popen[bytes] | None = None
        self.folder: str | None = None
        self.buffer = b""
        self.restarts = 0

    def __enter__(self) -> PythonSandbox:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Start the child and load the grader; GraderSourceError when the source cannot be loaded."""
        self.close()
        self.folder = tempfile.mkdtemp(prefix="grader-")
        self.child = subprocess.Popen(
            [sys.executable, "-I", str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=self.folder,
            env={"PATH": os.defpath},
            start_new_session=True,  # a kill reaches only this child
        )
        self.buffer = b""
        setup = {
            "source": self.source,
            "memory_mb": self.limits.memory_mb,
            "cpu_seconds": self.limits.cpu_seconds,
            "folder": self.folder,
            "parent": os.getpid(),  # the child ends itself when this process is gone (even after a kill -9)
        }
        self._send(setup)
        answer = self._receive(self.limits.start_seconds)
        if answer is None:
            self.close()
            raise GraderSourceError(f"the grader did not load within {self.limits.start_seconds:g} s")
        if "setup_error" in answer:
            self.close()
            raise GraderSourceError(str(answer["setup_error"]))

    def score(self, sample: dict[str, Any], item: Any, between: Callable[[], None] | None = None) -> SandboxScore:
        """grade(sample, item) in the child; 0.0 with the reason when it fails in any way. `between()` is called
        every POLL_S while the grader runs; when it raises, the child is ended (its answer would come late)."""
        began = time.monotonic()
        try:
            if self.child is None or self.child.poll() is not None:
                self.restarts += 1
                self.start()
            self._limit_cpu()
            self._send({"sample": sample, "item": item})
            answer = self._receive(self.limits.seconds, between)
        except GraderSourceError as exc:
            return SandboxScore(0.0, str(exc), time.monotonic() - began)
        except (BrokenPipeError, OSError):
            answer = None
        except BaseException:
            self.close()
            raise
        seconds = time.monotonic() - began
        if answer is None:
            reason = self._why_no_answer(seconds)
            self.close()
            return SandboxScore(0.0, reason, seconds)
        if "score" in answer and isinstance(answer["score"], (int, float)):
            return SandboxScore(float(answer["score"]), None, seconds)
        return SandboxScore(0.0, str(answer.get("error", "the grader gave no score"))[:1000], seconds)

    def close(self) -> None:
        """End the child (if any) and remove its folder."""
        child, self.child = self.child, None
        if child is not None:
            if child.poll() is None:
                try:
                    os.killpg(child.pid, 9)
                except ProcessLookupError:
                    pass
            child.wait()
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    pipe.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _why_no_answer(self, seconds: float) -> str:
        child = self.child
        code = child.poll() if child is not None else None
        if code is None:
            return f"took longer than {self.limits.seconds:g} s (the limit per answer)"
        if code in (-24, -9) and seconds < self.limits.seconds:  # SIGXCPU, or SIGKILL at the hard CPU limit
            return f"used more than {self.limits.cpu_seconds} s of CPU time (the limit per answer)"
        return f"the grader's process ended (exit {code})"

    def _limit_cpu(self) -> None:
        """The child's CPU time so far plus this call's share, as its CPU limit: past it the kernel ends the
        child (SIGXCPU). Set from here (prlimit), since the child may not change its own limits."""
        assert self.child is not None
        fields = Path(f"/proc/{self.child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        soft = math.ceil(used + self.limits.cpu_seconds)
        resource.prlimit(self.child.pid, resource.RLIMIT_CPU, (soft, soft + 1))

    def _send(self, message: dict[str, Any]) -> None:
        assert self.child is not None and self.child.stdin is not None
        self.child.stdin.write(json.dumps(message).encode("utf-8") + b"\n")
        self.child.stdin.flush()

    def _receive(self, seconds: float, between: Callable[[], None] | None = None) -> dict[str, Any] | None:
        """The child's next answer line within `seconds`, or None (timed out, died, or said too much)."""
        assert self.child is not None and self.child.stdout is not None
        pipe = self.child.stdout.fileno()
        deadline = time.monotonic() + seconds
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or len(self.buffer) > MAX_ANSWER_BYTES:
                return None
            ready, _, _ = select.select([pipe], [], [], min(left, POLL_S))
            if not ready:
                failpoint("grader_running")  # a fault test kills the worker while a slow grader runs
                if between is not None:
                    between()
                continue
            chunk = os.read(pipe, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            answer = json.loads(line)
        except ValueError:
            return None
        return answer if isinstance(answer, dict) else None
