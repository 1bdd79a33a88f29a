"""An httpx2 client (the HTTP library huggingface_hub speaks through) that obeys the outbound-request rules of
jobs.common.outbound: every connection it opens, redirects and upload URLs included, goes to an address vetted
by a policy at that moment (public, or allowed by an administrator), never to the name looked up again, and
never through a proxy from the environment. TLS still checks the certificate against the URL's host name."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import httpcore2
import httpx2

from jobs.common.outbound import OutboundPolicy, OutboundRefused, Target, vetted_addresses


class GuardedBackend(httpcore2.SyncBackend):
    """Opens TCP connections only to the vetted addresses of the host asked for (OutboundRefused otherwise)."""

    def __init__(self, policy_of: Callable[[], OutboundPolicy]):
        self.policy_of = policy_of

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable | None = None,
    ) -> httpcore2.NetworkStream:
        policy = self.policy_of()
        if not policy.port_allowed(port):
            raise OutboundRefused("refused: port not allowed", f"{host}:{port} not in {policy.ports_text()}")
        addresses = vetted_addresses(Target("https", host.lower(), port, "/"), policy)
        error: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore2.ConnectError as exc:
                error = exc
        raise error or httpcore2.ConnectError(f"no address to connect to for {host}")


class GuardedTransport(httpx2.HTTPTransport):
    """httpx2's own transport over a connection pool whose every connection goes through GuardedBackend."""

    def __init__(self, policy_of: Callable[[], OutboundPolicy]):
        super().__init__(trust_env=False)
        # httpx2 builds its pool without a way to name the network backend: the same pool, with the guard. No
        # connection is kept for later, so each request is checked against the policy of its own moment.
        self._pool = httpcore2.ConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            max_keepalive_connections=0,
            network_backend=GuardedBackend(policy_of),
        )


def guarded_client(policy_of: Callable[[], OutboundPolicy], **kwargs) -> httpx2.Client:
    """A client whose connections obey `policy_of()` (read at each connection, so a changed setting counts)."""
    return httpx2.Client(transport=GuardedTransport(policy_of), trust_env=False, **kwargs)
