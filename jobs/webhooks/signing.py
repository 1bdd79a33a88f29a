"""Standard Webhooks signatures, so their verifier libraries accept our deliveries."""

from __future__ import annotations

import base64
import hashlib
import hmac


def webhook_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`; the key is the secret's base64 part
    decoded, as in Standard Webhooks, so their verifier libraries accept it."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
