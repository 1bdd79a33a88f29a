"""The pieces every capped child process shares (the dataset reader, the GGUF converter): an address-space limit
set in the child before it reads anything, and a reader of the child's stderr that keeps its tail."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # where `python -m worker.<module>` resolves


def start_child(module: str, request: Path) -> subprocess.Popen[bytes]:
    """`python -m <module> <request>`: no input, no output but stderr (read it with StderrTail)."""
    return subprocess.Popen(
        [sys.executable, "-m", module, str(request)],
        cwd=PROJECT_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def limit_address_space(memory_mb: int) -> None:
    """Cap this process's address space (RLIMIT_AS) at `memory_mb`, never above the hard limit: an allocation
    past it fails (MemoryError) instead of taking the machine's memory."""
    import resource

    limit = memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


class StderrTail(threading.Thread):
    """Read a child's stderr as it comes (a full pipe would block the child); keep the last 64 KB."""

    def __init__(self, child: subprocess.Popen[bytes]) -> None:
        super().__init__(daemon=True)
        self.pipe = child.stderr
        self.chunks: list[bytes] = []
        self.start()

    def run(self) -> None:
        pipe = self.pipe
        assert pipe is not None  # the child is started with stderr=PIPE
        for chunk in iter(lambda: pipe.read(4096), b""):
            self.chunks.append(chunk)
            while sum(map(len, self.chunks)) > 65536 and len(self.chunks) > 1:
                self.chunks.pop(0)

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")
