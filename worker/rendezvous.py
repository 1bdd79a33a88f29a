"""The rendezvous of a job on several devices, closed to everyone but the job's own ranks.

The launcher (`worker.distributed.Supervisor`) opens the listening socket itself on loopback (or on the
address LORA_STUDIO_RENDEZVOUS_HOST names, for several hosts) and hands it to torch's TCPStore, whose own
server would bind every interface; gloo and NCCL are pointed at the same interface unless an admin set them.
Each job has a random secret, passed to its ranks in their environment (never argv). Every use of the store
goes through `SealedStore`: key names are HMACs under the secret and values are sealed with it (encrypted
and authenticated, with keys derived from the secret), and the launcher writes a sealed `auth` entry first,
so a process without the secret reads only opaque names and bytes and cannot join or forge an entry.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
from typing import Any

from worker.errors import TrainingError

SECRET_ENV = "LORA_STUDIO_RENDEZVOUS_SECRET"  # the job's secret, in each rank's environment only
HOST_ENV = "LORA_STUDIO_RENDEZVOUS_HOST"  # the address the rendezvous listens on (default loopback)
IFNAME_ENVS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TP_SOCKET_IFNAME")
AUTH_KEY = "auth"
AUTH_VALUE = b"lora-studio rendezvous"


def rendezvous_host() -> str:
    """The address the store listens on and the ranks connect to: 127.0.0.1 unless the setting names one."""
    return os.environ.get(HOST_ENV, "").strip() or "127.0.0.1"


def interface_of(host: str) -> str | None:
    """The network interface that holds `host` ("lo" for loopback), None when none is found."""
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except OSError:
        return None
    if address.is_loopback:
        return "lo"
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue
            if socket.inet_ntoa(packed[20:24]) == str(address):
                return name
    return None


def listen_socket(host: str) -> socket.socket:
    """A socket listening on a free port of `host` only (the store's own server would bind every interface)."""
    address = socket.gethostbyname(host)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, 0))
    sock.listen(128)
    return sock


class RendezvousRefused(TrainingError):
    """The store is not this job's, or holds an entry not sealed with its secret."""


def _derive(secret: str, purpose: bytes) -> bytes:
    return hmac.new(bytes.fromhex(secret), purpose, hashlib.sha256).digest()


class SealedStore:
    """A torch.distributed store over another whose key names are HMACs under the job's secret and whose
    values are encrypted and authenticated with it (see the module docstring). Counters (`add`) stay
    plain numbers under hashed names: a store cannot add to a sealed value.

    Built on `dist.Store` lazily (torch is imported only where a rank runs); `SealedStore.over(inner,
    secret)` returns one."""

    @staticmethod
    def over(inner: Any, secret: str) -> Any:
        import torch.distributed as dist

        class Sealed(dist.Store):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner
                self.name_key = _derive(secret, b"name")
                self.enc_key = _derive(secret, b"enc")
                self.mac_key = _derive(secret, b"mac")

            def name(self, key: str) -> str:
                return "job/" + hmac.new(self.name_key, key.encode(), hashlib.sha256).hexdigest()

            def stream(self, nonce: bytes, size: int) -> bytes:
                blocks = (size + 31) // 32
                out = b"".join(
                    hmac.new(self.enc_key, nonce + i.to_bytes(8, "big"), hashlib.sha256).digest() for i in range(blocks)
                )
                return out[:size]

            def seal(self, key: str, value: bytes) -> bytes:
                nonce = secrets.token_bytes(16)
                body = bytes(a ^ b for a, b in zip(value, self.stream(nonce, len(value)), strict=True))
                tag = hmac.new(self.mac_key, key.encode() + b"\0" + nonce + body, hashlib.sha256).digest()
                return nonce + body + tag

            def unseal(self, key: str, sealed: bytes) -> bytes:
                nonce, body, tag = sealed[:16], sealed[16:-32], sealed[-32:]
                want = hmac.new(self.mac_key, key.encode() + b"\0" + nonce + body, hashlib.sha256).digest()
                if len(sealed) < 48 or not hmac.compare_digest(tag, want):
                    raise RendezvousRefused(
                        f"the rendezvous store holds an entry for {key!r} not sealed with this job's secret; "
                        "another process wrote it, so the run is stopped"
                    )
                return bytes(a ^ b for a, b in zip(body, self.stream(nonce, len(body)), strict=True))

            def set(self, key: str, value: Any) -> None:
                data = value.encode() if isinstance(value, str) else bytes(value)
                self.inner.set(self.name(key), self.seal(key, data))

            def get(self, key: str) -> bytes:
                return self.unseal(key, bytes(self.inner.get(self.name(key))))

            def add(self, key: str, amount: int) -> int:
                return int(self.inner.add(self.name(key), amount))

            def check(self, keys: list[str]) -> bool:
                return bool(self.inner.check([self.name(k) for k in keys]))

            def wait(self, keys: list[str], timeout: Any = None) -> None:
                names = [self.name(k) for k in keys]
                if timeout is None:
                    self.inner.wait(names)
                else:
                    self.inner.wait(names, timeout)

            def delete_key(self, key: str) -> bool:
                return bool(self.inner.delete_key(self.name(key)))

            def num_keys(self) -> int:
                return int(self.inner.num_keys())

            def set_timeout(self, timeout: Any) -> None:
                self.inner.set_timeout(timeout)

        return Sealed()


def join_store(host: str, port: int, secret: str, timeout_s: float) -> Any:
    """A rank's view of the job's store: RendezvousRefused unless the store holds the launcher's `auth`
    entry sealed with `secret`."""
    import datetime

    import torch.distributed as dist

    client = dist.TCPStore(host, port, None, False, timeout=datetime.timedelta(seconds=timeout_s))
    store = SealedStore.over(client, secret)
    if not store.check([AUTH_KEY]) or store.get(AUTH_KEY) != AUTH_VALUE:
        raise RendezvousRefused(f"the rendezvous at {host}:{port} is not this job's (no entry sealed with its secret)")
    return store


# --- messages over a socket pair: one JSON object per message (never pickle) -------------------------
