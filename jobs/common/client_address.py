"""The client's IP address, as the log-in lockout (django-axes) counts failures by it.

Behind reverse proxies REMOTE_ADDR is the nearest proxy's address, the same for everyone: a lockout by
(username, address) would then lock the user out for everyone. With TRUSTED_PROXY_COUNT = n proxies in front,
each appending the address it got the request from to X-Forwarded-For, the client's address is the entry n
from the right; whatever a client wrote to the left of it is not trusted. Without the setting the header is
ignored (anyone can send it)."""

from __future__ import annotations

import ipaddress

from django.conf import settings


def forwarded_client(remote_addr: str | None, forwarded_for: str | None, trusted_proxies: int) -> str | None:
    """The address `trusted_proxies` proxies report for the client, else `remote_addr` (no proxies trusted,
    fewer entries than proxies, a request that came around them, or an entry that is not an IP address)."""
    if trusted_proxies <= 0 or not forwarded_for:
        return remote_addr
    entries = [entry.strip() for entry in forwarded_for.split(",")]
    if len(entries) < trusted_proxies:
        return remote_addr
    candidate = entries[-trusted_proxies]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote_addr


def client_address(request) -> str | None:
    """The request's client address under settings.TRUSTED_PROXY_COUNT (django-axes' AXES_CLIENT_IP_CALLABLE)."""
    return forwarded_client(
        request.META.get("REMOTE_ADDR"), request.META.get("HTTP_X_FORWARDED_FOR"), settings.TRUSTED_PROXY_COUNT
    )
