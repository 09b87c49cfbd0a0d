"""SSRF guard for callback URLs (user input that makes us send requests)."""

from __future__ import annotations

from urllib.parse import urlsplit

from config import Settings
from worker.errors import UnsafeCallbackURLError


def check_callback_url(url: str, settings: Settings) -> None:
    """Refuse a callback URL that is malformed or not http(s).

    Raises :class:`UnsafeCallbackURLError` with the reason.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeCallbackURLError(f"scheme {parts.scheme!r} is not http or https")
    if not parts.hostname:
        raise UnsafeCallbackURLError("no host")
    if parts.username or parts.password:
        raise UnsafeCallbackURLError("credentials in the URL")
