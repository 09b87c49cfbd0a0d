"""What never reaches a log line or a screen: secrets, and the secret parts of URLs.

One URL redactor (:func:`safe_url`) for logs, the CLI, the demo and callback
records; one :class:`Redactor` for the secrets that settings hold.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from config import Settings

_REDACTED = "[REDACTED]"
_GENERIC = [
    # The query string of any URL: presigned URLs carry their signature there.
    (re.compile(r"(https?://[^\s?#'\"<>]+)\?[^\s'\"<>]*"), r"\1?" + _REDACTED),
    # urllib3 names the URL by its path alone ("Max retries exceeded with url: /a?b").
    (re.compile(r"(url: /[^\s?#'\"<>]*)\?[^\s'\"<>]*"), r"\1?" + _REDACTED),
    # A signature parameter however the URL around it was cut.
    (
        re.compile(r"(?i)((?:x-amz-signature|x-goog-signature|signature|sig)=)[^&\s'\"<>)]+"),
        r"\1" + _REDACTED,
    ),
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "whsec_" + _REDACTED),
    (re.compile(r"(?i)(x-api-key['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"), r"\1" + _REDACTED),
]
_MIN_SECRET_LEN = 6


def safe_url(url: str) -> str:
    """``url`` without credentials, query string or fragment: fit for logs and screens.

    Presigned URLs carry their signature in the query, and a callback URL may
    carry a token there or in its user part; the port stays, as written.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class Redactor:
    """Masks configured secrets and secret-shaped text in a string."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Short values would mask innocent text; real keys are long.
        literal = sorted({s for s in secrets if len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True)
        self._literal = re.compile("|".join(re.escape(s) for s in literal)) if literal else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        """Mask the API key and every webhook secret of ``settings``."""
        secrets = [settings.api_key.get_secret_value(), *settings.webhook_secrets()]
        # A secret without its whsec_ prefix is what actually signs.
        secrets += [s.removeprefix("whsec_") for s in settings.webhook_secrets()]
        return cls(secrets)

    def __call__(self, text: str) -> str:
        """``text`` with every secret replaced by ``[REDACTED]``."""
        if self._literal is not None:
            text = self._literal.sub(_REDACTED, text)
        for pattern, replacement in _GENERIC:
            text = pattern.sub(replacement, text)
        return text
