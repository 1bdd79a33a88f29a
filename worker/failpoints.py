"""Failpoints for fault tests: named places in a run where a test can hold a worker still and kill it
at exactly that moment. Off unless LORA_STUDIO_FAILPOINTS names them, e.g. "setup=4,save=4": the run
then writes <LORA_STUDIO_FAILPOINT_DIR>/<name> (so the test knows where the worker is) and sleeps that
many seconds. Each fires once per process."""

from __future__ import annotations

import os
import time
from pathlib import Path

_fired: set[str] = set()


def _config() -> dict[str, float]:
    spec = os.environ.get("LORA_STUDIO_FAILPOINTS", "")
    pairs = (item.split("=", 1) for item in spec.split(",") if "=" in item)
    return {name.strip(): float(seconds) for name, seconds in pairs}


def failpoint(name: str) -> None:
    """Pause here when a fault test asked for it; otherwise do nothing."""
    seconds = _config().get(name)
    if seconds is None or name in _fired:
        return
    _fired.add(name)
    folder = Path(os.environ.get("LORA_STUDIO_FAILPOINT_DIR", "."))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".{name}").write_text(str(os.getpid()))
    os.replace(folder / f".{name}", folder / name)  # a test sees the file only once it holds the pid
    time.sleep(seconds)
