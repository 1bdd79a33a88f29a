"""Outbound HTTP goes only to the public internet (webhooks today).

A user-given URL could otherwise aim the server at itself or its network (127.0.0.1:6390, the cloud
metadata service at 169.254.169.254, a Docker socket on 10.0.0.5:2375): a port scanner and a blind POST.
So, at the moment of sending, the host is resolved once, every address it resolves to is checked
(one refused address refuses the URL), and the connection goes to the vetted address itself, never to
the name again, so a DNS answer that changes between check and connect (rebinding) cannot slip
through. The Host header, TLS SNI and certificate check still use the URL's host name.

Pure checks (`address_refusal`, `ipv4_literal`, `url_target`, `registration_refusal`) and one
connection helper (`outbound_connection`). Failures carry a short category for users
(`OutboundError.category`, e.g. "refused: private address"); details are for the server's log only.
An administrator lets chosen internal targets through with WEBHOOK_ALLOWED_HOSTS (names or CIDRs);
WEBHOOK_ALLOWED_PORTS limits the ports for every target, allowed ones included.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]  # (host, port) -> IP address strings

# What a user sees: a category, never exception text.
REFUSED_LOOPBACK = "refused: loopback address"
REFUSED_PRIVATE = "refused: private address"
REFUSED_LINK_LOCAL = "refused: link-local address"
REFUSED_MULTICAST = "refused: multicast address"
REFUSED_UNSPECIFIED = "refused: unspecified address"
REFUSED_RESERVED = "refused: reserved address"
REFUSED_PORT = "refused: port not allowed"
REFUSED_URL = "refused: invalid URL"
UNRESOLVED = "could not resolve host"
TIMEOUT = "timeout"
CONNECTION_REFUSED = "connection refused"
CONNECTION_RESET = "connection reset"
CONNECTION_FAILED = "connection failed"
TLS_ERROR = "TLS error"
BAD_ANSWER = "invalid HTTP answer"

SCHEMES = {"http": 80, "https": 443}


def _networks(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# IANA's special-purpose registries, spelled out: `is_global` differs between Python versions
# (3.11 calls 2002::/16, 64:ff9b:1::/48 and ::7f00:1 global), so it is only the last word.
_REFUSED_NETWORKS: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = (
    (REFUSED_UNSPECIFIED, _networks("0.0.0.0/8", "::/128")),
    (REFUSED_LOOPBACK, _networks("127.0.0.0/8", "::1/128")),
    (
        REFUSED_PRIVATE,
        _networks(
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",  # CGNAT
            "fc00::/7",
            "fec0::/10",
            "64:ff9b:1::/48",
        ),
    ),  # unique/site-local, local NAT64
    (REFUSED_LINK_LOCAL, _networks("169.254.0.0/16", "fe80::/10")),
    (REFUSED_MULTICAST, _networks("224.0.0.0/4", "ff00::/8")),
    (
        REFUSED_RESERVED,
        _networks(
            "192.0.0.0/24",
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",  # protocol assignments, documentation
            "198.18.0.0/15",
            "192.88.99.0/24",
            "240.0.0.0/4",  # benchmarking, 6to4 relays, reserved + broadcast
            "::/8",
            "100::/64",
            "2001::/23",
            "2001:db8::/32",
            "2002::/16",
            "3fff::/20",
            "5f00::/16",
        ),
    ),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_ASCII_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))


class OutboundError(Exception):
    """An outbound request that was refused or failed; `category` is what a user may see."""

    def __init__(self, category: str, detail: str = ""):
        super().__init__(category)
        self.category = category
        self.detail = detail or category


class OutboundRefused(OutboundError):
    """Refused by policy before any connection was made."""


@dataclass(frozen=True)
class OutboundPolicy:
    """Which ports any target may use, and which internal hosts (names) or networks an admin allows."""

    allowed_ports: tuple[tuple[int, int], ...] = ((80, 80), (443, 443), (8080, 8080), (8443, 8443))
    allowed_names: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def build(cls, *, ports: Iterable[int | tuple[int, int]], hosts: Iterable[str]) -> OutboundPolicy:
        """From the settings' shapes: ports as numbers or (low, high) ranges; hosts as names, IPs or CIDRs."""
        ranges = tuple((p, p) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in ports)
        names, networks = set(), []
        for entry in hosts:
            network = allowed_host_network(entry)
            if network is None:
                names.add(host_normalise(entry))
            else:
                networks.append(network)
        return cls(allowed_ports=ranges, allowed_names=frozenset(names), allowed_networks=tuple(networks))

    @classmethod
    def from_settings(cls) -> OutboundPolicy:
        """The policy of WEBHOOK_ALLOWED_PORTS and WEBHOOK_ALLOWED_HOSTS."""
        from django.conf import settings

        return cls.build(ports=settings.WEBHOOK_ALLOWED_PORTS, hosts=settings.WEBHOOK_ALLOWED_HOSTS)

    def port_allowed(self, port: int) -> bool:
        return any(low <= port <= high for low, high in self.allowed_ports)

    def ports_text(self) -> str:
        return ", ".join(str(low) if low == high else f"{low}-{high}" for low, high in self.allowed_ports)

    def address_allowed(self, ip: IPAddress) -> bool:
        """An admin-allowed address (an IPv4-mapped IPv6 form counts as its IPv4 address)."""
        candidates = [ip] + ([ip.ipv4_mapped] if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else [])
        return any(c.version == n.version and c in n for c in candidates for n in self.allowed_networks)


def host_normalise(host: str) -> str:
    """Lower case, without the trailing dot of a fully qualified name and without IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host[:-1] if host.endswith(".") and not host.endswith("..") else host


def allowed_host_network(entry: str) -> IPNetwork | None:
    """An allow-list entry as a network (an IP is a /32 or /128), or None for a host name."""
    entry = host_normalise(entry)
    literal = ipv4_literal(entry)
    if literal is not None:
        return ipaddress.ip_network(literal)
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address `host` spells the way inet_aton (and so resolvers and browsers) reads it, or None:
    one to four dot-separated parts, each decimal, octal (leading 0) or hex (0x); the last part fills the
    remaining bytes. So 2130706433, 0x7f.1, 017700000001 and 127.1 are all 127.0.0.1."""
    host = host_normalise(host)
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        if re.fullmatch(r"0[xX][0-9a-fA-F]*", part):
            value = int(part[2:] or "0", 16)
        elif re.fullmatch(r"0[0-7]*", part):
            value = int(part, 8)
        elif re.fullmatch(r"[1-9][0-9]*", part):
            value = int(part)
        else:
            return None
        values.append(value)
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for i, value in enumerate(head):
        number += value << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def ip_literal(host: str) -> IPAddress | None:
    """The address if `host` is an IP literal in any spelling (IPv6, with or without a zone), else None."""
    host = host_normalise(host)
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    return ipv4_literal(host)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, IPv4-compatible, NAT64 (64:ff9b::/96) or 6to4 address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(ip: IPAddress) -> str | None:
    """Why `ip` is not a public internet address (a REFUSED_* category), or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            refusal = address_refusal(embedded)
            if refusal or ip.ipv4_mapped is not None or ip in _NAT64:
                return refusal  # a mapped or NAT64 form of a public address is that address
    for category, networks in _REFUSED_NETWORKS:
        if any(ip.version == n.version and ip in n for n in networks):
            return category
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return REFUSED_LINK_LOCAL  # a zone (fe80::1%eth0) only means something on a local link
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST_V6:
        return REFUSED_RESERVED
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_private:
        return REFUSED_RESERVED
    return None


@dataclass(frozen=True)
class Target:
    """Where a URL points: scheme, host (normalised, as written), port, and the request's path + query."""

    scheme: str
    host: str
    port: int
    path: str


def url_target(url: str, policy: OutboundPolicy) -> Target:
    """The URL's target if its scheme and port are allowed, else OutboundRefused (nothing resolved yet)."""
    if _CONTROL_OR_SPACE.search(url):  # http.client would refuse them half-way
        raise OutboundRefused(REFUSED_URL, f"{url!r}: control characters or spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port past 65535, a broken IPv6 literal
        raise OutboundRefused(REFUSED_URL, f"{url!r}: {exc}") from None
    if parts.scheme not in SCHEMES or not parts.hostname or parts.username or parts.password:
        raise OutboundRefused(REFUSED_URL, f"{url!r}: not an http(s) URL with a host")
    port = SCHEMES[parts.scheme] if port is None else port
    if not policy.port_allowed(port):
        raise OutboundRefused(REFUSED_PORT, f"{url!r}: port {port} not in {policy.ports_text()}")
    host = host_normalise(parts.hostname)
    if ip_literal(host) is None:
        try:  # the name as DNS, SNI and the Host header spell it
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise OutboundRefused(REFUSED_URL, f"{url!r}: not a valid host name") from None
    # http.client sends ASCII only: other characters of the path are percent-encoded.
    path = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=_ASCII_PRINTABLE)
    return Target(parts.scheme, host, port, path)


def registration_refusal(url: str, policy: OutboundPolicy) -> OutboundRefused | None:
    """What can be refused when a URL is registered: its scheme, its port, an IP literal or a name that
    is always local (localhost). Other names are checked when sending, since their DNS can change."""
    try:
        target = url_target(url, policy)
    except OutboundRefused as refused:
        return refused
    if target.host in policy.allowed_names:
        return None
    ip = ip_literal(target.host)
    if ip is not None:
        refusal = None if policy.address_allowed(ip) else address_refusal(ip)
        return OutboundRefused(refusal, f"{url!r}: {ip}") if refusal else None
    if target.host == "localhost" or target.host.endswith(".localhost"):
        return OutboundRefused(REFUSED_LOOPBACK, f"{url!r}: {target.host}")
    return None


def system_resolve(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver, as IP strings."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))  # (address, port, ...): the address is a str


def vetted_addresses(target: Target, policy: OutboundPolicy, resolver: Resolver | None = None) -> list[str]:
    """The addresses to connect to for `target`: an IP literal as is, a name resolved once; every one
    must be public or admin-allowed, else OutboundRefused; OutboundError when the name does not resolve."""
    name_allowed = target.host in policy.allowed_names
    literal = ip_literal(target.host)
    if literal is not None:
        ips: list[IPAddress] = [literal]
    else:
        try:
            answers = (resolver or system_resolve)(target.host, target.port)
            ips = [ipaddress.ip_address(a) for a in answers]
        except (OSError, UnicodeError, ValueError) as exc:
            raise OutboundError(UNRESOLVED, f"{target.host}: {type(exc).__name__}: {exc}") from None
        if not ips:
            raise OutboundError(UNRESOLVED, f"{target.host}: no addresses")
    for ip in ips:
        refusal = None if name_allowed or policy.address_allowed(ip) else address_refusal(ip)
        if refusal:
            raise OutboundRefused(refusal, f"{target.host} -> {ip} (of {', '.join(map(str, ips))})")
    return [str(ip) for ip in ips]


class _PinnedMixin:
    """Connects to vetted addresses only, in order, never looking the host name up again; the
    connection's `host` stays the URL's host, so http.client sends it as Host, and TLS uses it for SNI
    and the certificate check."""

    addresses: list[str]

    def _connect_vetted(self, _host_port, timeout, source_address=None):
        # One timeout for all the addresses together, as the caller's deadline counts from the start.
        ends = time.monotonic() + timeout if isinstance(timeout, (int, float)) else None
        error: OSError | None = None
        for address in self.addresses:
            left = timeout if ends is None else ends - time.monotonic()
            if ends is not None and left <= 0:
                raise error or TimeoutError("connect timed out")
            try:
                return socket.create_connection((address, self.port), left, source_address)
            except OSError as exc:
                error = exc
        raise error or OSError("no address to connect to")


class PinnedHTTPConnection(_PinnedMixin, http.client.HTTPConnection):
    def __init__(self, host: str, port: int, *, addresses: list[str], **kwargs):
        super().__init__(host, port, **kwargs)
        self.addresses = addresses
        self._create_connection = self._connect_vetted  # http.client's hook for how a socket is made


class PinnedHTTPSConnection(_PinnedMixin, http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, addresses: list[str], **kwargs):
        super().__init__(host, port, context=kwargs.pop("context", None) or ssl.create_default_context(), **kwargs)
        self.addresses = addresses
        self._create_connection = self._connect_vetted


def outbound_connection(
    url: str, *, timeout: float, policy: OutboundPolicy | None = None, resolver: Resolver | None = None
) -> tuple[http.client.HTTPConnection, str]:
    """A not yet connected HTTP(S) connection pinned to the URL's vetted addresses, and the request
    path; OutboundRefused / OutboundError before any socket is opened when the URL may not be reached."""
    policy = policy or OutboundPolicy.from_settings()
    target = url_target(url, policy)
    addresses = vetted_addresses(target, policy, resolver)
    cls = PinnedHTTPSConnection if target.scheme == "https" else PinnedHTTPConnection
    return cls(target.host, target.port, addresses=addresses, timeout=timeout), target.path


def failure_category(exc: BaseException) -> str:
    """The user-facing category of a failed exchange (the exception's text stays in the server's log)."""
    if isinstance(exc, OutboundError):
        return exc.category
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return TIMEOUT
    if isinstance(exc, ssl.SSLError):  # certificate checks included (ssl.SSLCertVerificationError)
        return TLS_ERROR
    if isinstance(exc, ConnectionRefusedError):
        return CONNECTION_REFUSED
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return CONNECTION_RESET
    if isinstance(exc, socket.gaierror):
        return UNRESOLVED
    if isinstance(exc, http.client.HTTPException):
        return BAD_ANSWER
    return CONNECTION_FAILED
