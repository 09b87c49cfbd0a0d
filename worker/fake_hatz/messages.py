"""The request and response values passed between the HTTP plumbing and the handlers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from .body import Body


@dataclass
class Request:
    """One parsed HTTP request whose body has not been read yet."""

    method: str
    #: URL path, percent-decoded, without the query string.
    path: str
    #: The request target exactly as sent (path and query), for the call log.
    target: str
    query: dict[str, list[str]]
    headers: Message
    body: Body
    #: Path parameters of the matched route, e.g. ``{"job_id": "..."}``.
    params: dict[str, str] = field(default_factory=dict)
    #: Per-request memo (the parsed JSON body), so the body is parsed once.
    cache: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """Return a request header's value, or None when absent."""
        value = self.headers.get(name)
        return None if value is None else str(value)

    def query_value(self, name: str) -> str | None:
        """Return a query parameter (the last one when repeated), or None when absent."""
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class Response:
    """What to answer, plus what the call log should record about the request."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Force ``Connection: close`` (unread body left, broken framing, ...).
    close_connection: bool = False
    #: Answer nothing: hold the connection ``hang_seconds`` then close it.
    hang_up: bool = False
    hang_seconds: float = 0.0
    # --- recorded in the call log -----------------------------------------
    fault: str | None = None
    job_id: str | None = None
    app_id: str | None = None
    inputs: dict[str, Any] | None = None


def json_response(status: int, payload: object, headers: dict[str, str] | None = None) -> Response:
    """Build a JSON response, serialised compactly like FastAPI's ``JSONResponse``."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(status, body, "application/json", dict(headers or {}))


def detail_response(status: int, detail: str) -> Response:
    """Build the API's usual error body, ``{"detail": "..."}``."""
    return json_response(status, {"detail": detail})
