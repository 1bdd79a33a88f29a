"""Free loopback ports for the tests' servers, never the same one twice.

Asking the kernel for port 0 and closing the socket hands the same number back to the next caller until
someone binds it: a stack that chose its web port first and its Redis port next got the same port for both
(CI: "address already in use"). Ports here come from a block of its own per xdist worker, below the
kernel's ephemeral range (32768-60999 here), so outgoing connections and other workers never take them, and
no number is handed out twice in one process.
"""

from __future__ import annotations

import os
import random
import socket

BLOCK = 1000
FIRST = 20000  # 20000 + 12 workers x 1000 stays under 32768
_handed: set[int] = set()


def _worker_index() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:] or 0) if name.startswith("gw") else 0


def free_port() -> int:
    start = FIRST + (_worker_index() % 12) * BLOCK
    candidates = [p for p in range(start, start + BLOCK) if p not in _handed]
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed.add(port)
        return port
    raise RuntimeError(f"no free port left in {start}-{start + BLOCK - 1}")
