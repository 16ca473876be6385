"""Standard Webhooks signatures (https://www.standardwebhooks.com): what a receiver verifies.

Several secrets sign each delivery during a rotation, so receivers may switch at their own pace.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterable

from gateway.settings import Settings


def decode_secret(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<sig>` per secret, space-separated (rotation)."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    signatures = []
    for secret in secrets:
        digest = hmac.new(decode_secret(secret), content, hashlib.sha256).digest()
        signatures.append("v1," + base64.b64encode(digest).decode())
    return " ".join(signatures)


def signed_headers(settings: Settings, msg_id: str, body: bytes) -> dict[str, str]:
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "gateway-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
    }
    if settings.webhook_secrets:
        headers["webhook-signature"] = sign(settings.webhook_secrets, msg_id, timestamp, body)
    return headers
