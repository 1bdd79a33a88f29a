"""Typed readers for environment variables; a bad value names the variable."""

from __future__ import annotations

import ipaddress
import os
import re

from django.core.exceptions import ImproperlyConfigured


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise ImproperlyConfigured(f"set the environment variable {name}")
    return value


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_port_ranges(name: str, default: str) -> list[tuple[int, int]]:
    """Ports and ranges, comma separated (`80,443,8000-8999`), as (low, high) pairs within 1-65535."""
    ranges = []
    for item in env_list(name, default.split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if match is None:
            raise ImproperlyConfigured(f"{name}: {item!r} is not a port or a range like 8000-8999")
        pair = (int(match[1]), int(match[2] or match[1]))
        if not 1 <= pair[0] <= pair[1] <= 65535:
            raise ImproperlyConfigured(f"{name}: {item!r} is not within 1-65535 (low-high)")
        ranges.append(pair)
    return ranges


_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")


def env_hosts(name: str, default: list[str]) -> list[str]:
    """Host names, IP addresses or CIDRs, comma separated (`hooks.internal,10.0.0.0/8,::1`)."""
    hosts = env_list(name, default)
    for host in hosts:
        try:
            ipaddress.ip_network(host.strip("[]"), strict=False)
        except ValueError:
            if not _HOST_NAME.match(host.lower()):
                raise ImproperlyConfigured(f"{name}: {host!r} is not a host name, an IP address or a CIDR") from None
    return hosts


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default).strip().lower() or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value
