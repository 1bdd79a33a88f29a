"""Failpoints for fault tests: named places in a run where a test can hold a worker still and kill it
at exactly that moment. Off unless LORA_STUDIO_FAILPOINTS names them, e.g. "setup=4,save=4": the run
then writes <LORA_STUDIO_FAILPOINT_DIR>/<name> (so the test knows where the worker is) and sleeps that
many seconds. Each fires once per process, the first time it is reached, or the n-th time with "sample=4@30"
(a place reached many times a step, such as each sampled token, struck after some steps are done)."""

from __future__ import annotations

import os
import time
from pathlib import Path

_fired: set[str] = set()
_reached: dict[str, int] = {}


def _config() -> dict[str, tuple[float, int]]:
    spec = os.environ.get("LORA_STUDIO_FAILPOINTS", "")
    pairs = (item.split("=", 1) for item in spec.split(",") if "=" in item)
    out = {}
    for name, value in pairs:
        seconds, _, nth = value.partition("@")
        out[name.strip()] = (float(seconds), int(nth or 1))
    return out


def failpoint(name: str) -> None:
    """Pause here when a fault test asked for it; otherwise do nothing."""
    armed = _config().get(name)
    if armed is None or name in _fired:
        return
    seconds, nth = armed
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] < nth:
        return
    _fired.add(name)
    folder = Path(os.environ.get("LORA_STUDIO_FAILPOINT_DIR", "."))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".{name}").write_text(str(os.getpid()))
    os.replace(folder / f".{name}", folder / name)  # a test sees the file only once it holds the pid
    time.sleep(seconds)
