"""Incremental reading of a request body framed by Content-Length or chunked encoding.

The body is never read eagerly: JSON endpoints read it whole under a small cap,
the upload endpoint streams it through the multipart parser, and whatever is
left unread is drained (or the connection closed) before the response, so a
keep-alive connection never sees stale body bytes as its next request.
"""

from __future__ import annotations

from typing import Protocol

_READ_SIZE = 64 * 1024
_MAX_CHUNK_LINE = 1024


class PayloadTooLarge(Exception):
    """Raised when a request body is larger than the endpoint accepts."""


class BadBody(Exception):
    """Raised when a body's framing is broken or the client hangs up mid-body."""


class Readable(Protocol):
    """The part of a buffered socket file a :class:`Body` needs."""

    def read(self, size: int, /) -> bytes:
        """Read up to ``size`` bytes, fewer only at end of stream."""

    def readline(self, size: int, /) -> bytes:
        """Read one line of at most ``size`` bytes."""


class Body:
    """The body of one request, read on demand."""

    def __init__(self, rfile: Readable, length: int | None, *, chunked: bool) -> None:
        """Wrap ``rfile``; ``length`` is the Content-Length (ignored when ``chunked``)."""
        self._rfile = rfile
        self._chunked = chunked
        self._remaining = 0 if chunked else (length or 0)
        self._chunk_left = 0
        self._done = not chunked and not length
        #: Content-Length when the client declared one, else None (chunked).
        self.declared_length: int | None = None if chunked else (length or 0)

    @property
    def exhausted(self) -> bool:
        """True once every byte of the body has been read."""
        return self._done

    def read(self, size: int) -> bytes:
        """Return up to ``size`` bytes of the body; ``b""`` once it is exhausted."""
        if self._done or size <= 0:
            return b""
        if not self._chunked:
            data = self._rfile.read(min(size, self._remaining))
            if not data:
                raise BadBody("connection closed before the end of the body")
            self._remaining -= len(data)
            self._done = self._remaining == 0
            return data
        if self._chunk_left == 0:
            self._next_chunk()
            if self._done:
                return b""
        data = self._rfile.read(min(size, self._chunk_left))
        if not data:
            raise BadBody("connection closed inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and self._rfile.readline(_MAX_CHUNK_LINE).strip():
            raise BadBody("chunk not followed by CRLF")
        return data

    def read_all(self, limit: int) -> bytes:
        """Read the whole body; raise :class:`PayloadTooLarge` beyond ``limit`` bytes."""
        if self.declared_length is not None and self.declared_length > limit:
            raise PayloadTooLarge(f"body of {self.declared_length} bytes exceeds {limit}")
        parts: list[bytes] = []
        total = 0
        while data := self.read(_READ_SIZE):
            total += len(data)
            if total > limit:
                raise PayloadTooLarge(f"body exceeds {limit} bytes")
            parts.append(data)
        return b"".join(parts)

    def drain(self, limit: int) -> bool:
        """Discard the unread rest of the body, at most ``limit`` bytes.

        Returns False when more than ``limit`` bytes remain or the framing is
        broken: the caller must then close the connection after responding.
        """
        if self._done:
            return True
        if not self._chunked and self._remaining > limit:
            return False
        total = 0
        try:
            while data := self.read(_READ_SIZE):
                total += len(data)
                if total > limit:
                    return False
        except (BadBody, OSError):
            return False
        return True

    def _next_chunk(self) -> None:
        line = self._rfile.readline(_MAX_CHUNK_LINE)
        if not line.endswith(b"\n"):
            raise BadBody("bad chunk size line")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise BadBody("bad chunk size") from exc
        if size < 0:
            raise BadBody("bad chunk size")
        if size == 0:
            # Trailer section: header lines up to an empty line.
            while True:
                trailer = self._rfile.readline(_MAX_CHUNK_LINE)
                if not trailer:
                    raise BadBody("connection closed in chunked trailer")
                if not trailer.strip():
                    break
            self._done = True
            return
        self._chunk_left = size
