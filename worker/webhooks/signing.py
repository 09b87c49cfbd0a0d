"""Standard Webhooks signing and verification (https://www.standardwebhooks.com).

Deliveries signed here verify with the unmodified ``standardwebhooks`` library.
Secrets are ``whsec_<base64>``; with several secrets (a rotation) every one
signs, and the header carries all signatures separated by spaces.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 5 * 60


class WebhookVerificationError(Exception):
    """Raised when a delivery's headers, timestamp or signature do not verify."""


def _key(secret: str) -> bytes:
    # Padding added as the reference library does: secrets are often unpadded base64.
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX) + "==")


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: ``v1,<b64>`` per secret, space-separated."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(_key(s), content, hashlib.sha256).digest()).decode()
        for s in secrets
    )


def headers(
    secrets: Sequence[str], msg_id: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt."""
    timestamp = int(time.time() if now is None else now)
    result = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if secrets:
        result["webhook-signature"] = sign(secrets, msg_id, timestamp, body)
    return result


def verify(
    secrets: str | Sequence[str],
    body: bytes,
    request_headers: Mapping[str, str],
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Verify a delivery for a receiver; raise :class:`WebhookVerificationError` if it fails.

    ``secrets``: one ``whsec_`` secret or several (accept any during a rotation).
    """
    lower = {k.lower(): v for k, v in request_headers.items()}
    msg_id = lower.get("webhook-id")
    stamp = lower.get("webhook-timestamp")
    signature = lower.get("webhook-signature")
    if not msg_id or not stamp or not signature:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("invalid webhook-timestamp") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp outside the tolerance")
    candidates = [secrets] if isinstance(secrets, str) else list(secrets)
    offered = [part.split(",", 1)[1] for part in signature.split() if part.startswith("v1,")]
    for secret in candidates:
        expected = sign([secret], msg_id, timestamp, body).split(",", 1)[1]
        if any(hmac.compare_digest(expected, sig) for sig in offered):
            return
    raise WebhookVerificationError("no matching signature")
