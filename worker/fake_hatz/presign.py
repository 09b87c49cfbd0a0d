"""Presigned download URLs in the manner of S3: stateless, signed, expiring.

The token names the job, the step and the issue time; the signature is an
HMAC over the token and the lifetime, under a key private to the fake
instance. Nothing is stored per URL, so presigning is free of memory growth.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass

from .messages import Response

#: Longest lifetime accepted, as for S3 presigned URLs (7 days).
MAX_EXPIRES_IN = 7 * 24 * 3600

FILES_PATH = "/_fake/files/"


@dataclass(frozen=True)
class Grant:
    """What a valid presigned URL gives access to."""

    job_id: str
    step_id: str
    issued_at: float
    expires_in: int


def presign(root_url: str, key: bytes, grant: Grant) -> str:
    """Build the download URL for ``grant`` under ``root_url``."""
    payload = json.dumps([grant.job_id, grant.step_id, int(grant.issued_at * 1000)])
    token = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    signature = _sign(key, token, str(grant.expires_in))
    return (
        f"{root_url}{FILES_PATH}{token}"
        f"?X-Amz-Expires={grant.expires_in}&X-Amz-Signature={signature}"
    )


def verify(
    key: bytes, token: str, expires: str | None, signature: str | None, now: float
) -> Grant | Response:
    """Check a download request; return its grant, or the S3-style 403 to answer."""
    if expires is None or signature is None:
        return s3_error(
            403,
            "AccessDenied",
            "Query-string authentication requires the X-Amz-Expires and X-Amz-Signature parameters",
        )
    if not hmac.compare_digest(_sign(key, token, expires), signature.lower()):
        return s3_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method.",
        )
    # The signature is ours, so the token and lifetime are well formed.
    job_id, step_id, issued_ms = json.loads(_unb64(token))
    grant = Grant(job_id, step_id, issued_ms / 1000, int(expires))
    if now > grant.issued_at + grant.expires_in:
        return s3_error(403, "AccessDenied", "Request has expired")
    return grant


def peek_job_id(token: str) -> str | None:
    """The job a token names, without checking its signature (never grants access)."""
    try:
        value = json.loads(_unb64(token))
    except ValueError:  # also covers binascii.Error and UnicodeDecodeError
        return None
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]
    return None


def s3_error(status: int, code: str, message: str) -> Response:
    """An S3-style XML error document."""
    request_id = uuid.uuid4().hex[:16].upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId></Error>"
    )
    return Response(status, body.encode(), "application/xml")


def _sign(key: bytes, token: str, expires: str) -> str:
    return hmac.new(key, f"{token}\n{expires}".encode(), hashlib.sha256).hexdigest()


def _unb64(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
