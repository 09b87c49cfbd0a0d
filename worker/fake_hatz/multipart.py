"""A streaming ``multipart/form-data`` parser (RFC 7578), standard library only.

File parts are never held in memory: their bytes are hashed and counted as
they arrive, so an upload of any size costs one small buffer. Header blocks
are parsed with :mod:`email`; ``cgi`` is deprecated and not used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.utils import collapse_rfc2231_value

from .body import PayloadTooLarge

_CHUNK = 64 * 1024
_MAX_HEADER_BLOCK = 16 * 1024
#: Bytes of each file part kept for inspection.
HEAD_BYTES = 1024


class MultipartError(ValueError):
    """Raised when a multipart body is malformed."""


@dataclass
class Part:
    """One form field. File parts keep only size, digest and first bytes."""

    name: str
    filename: str | None
    content_type: str | None
    size: int = 0
    sha256: str = ""
    #: The first :data:`HEAD_BYTES` bytes of a file part.
    head: bytes = b""
    #: The whole value of a non-file field.
    value: bytes = b""

    @property
    def is_file(self) -> bool:
        """True when the part carries a ``filename`` (an ``UploadFile`` in FastAPI terms)."""
        return self.filename is not None

    def text(self) -> str:
        """The value of a non-file field as text."""
        return self.value.decode("utf-8", "replace")


def content_type_boundary(content_type: str | None) -> tuple[str, str | None]:
    """Split a Content-Type header into its media type and ``boundary`` parameter."""
    message = Message()
    message["content-type"] = content_type or "text/plain"
    boundary = message.get_param("boundary")
    if isinstance(boundary, tuple):
        boundary = collapse_rfc2231_value(boundary)
    return message.get_content_type(), boundary if isinstance(boundary, str) else None


def parse_multipart(
    read: Callable[[int], bytes],
    boundary: str,
    *,
    max_file_bytes: int,
    max_field_bytes: int = 1024 * 1024,
    max_total_bytes: int | None = None,
) -> list[Part]:
    """Parse a multipart body read through ``read(n)`` (returns ``b""`` at the end).

    Raises :class:`MultipartError` when malformed and :class:`PayloadTooLarge`
    when a file part exceeds ``max_file_bytes`` or the body ``max_total_bytes``.
    Non-file fields larger than ``max_field_bytes`` are malformed input.
    """
    if not boundary or len(boundary) > 200:
        raise MultipartError("bad boundary")
    return _Parser(
        read, boundary.encode("latin-1"), max_file_bytes, max_field_bytes, max_total_bytes
    ).run()


class _Parser:
    def __init__(
        self,
        read: Callable[[int], bytes],
        boundary: bytes,
        max_file: int,
        max_field: int,
        max_total: int | None,
    ) -> None:
        self._read = read
        self._dash_boundary = b"--" + boundary
        self._delimiter = b"\r\n--" + boundary
        self._max_file = max_file
        self._max_field = max_field
        self._max_total = max_total
        self._buf = bytearray()
        self._total = 0
        self._eof = False
        self._hasher = hashlib.sha256()

    def run(self) -> list[Part]:
        self._skip_preamble()
        parts: list[Part] = []
        while self._after_delimiter():
            part = self._headers()
            self._content(part)
            parts.append(part)
        return parts

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._read(_CHUNK)
        if not data:
            self._eof = True
            return False
        self._total += len(data)
        if self._max_total is not None and self._total > self._max_total:
            raise PayloadTooLarge(f"body exceeds {self._max_total} bytes")
        self._buf += data
        return True

    def _need(self, n: int) -> None:
        while len(self._buf) < n:
            if not self._fill():
                raise MultipartError("unexpected end of body")

    def _skip_preamble(self) -> None:
        # The first delimiter may start the body or follow a preamble line.
        while True:
            at = self._buf.find(self._dash_boundary)
            if at == 0 or (at > 0 and self._buf[at - 2 : at] == b"\r\n"):
                del self._buf[: at + len(self._dash_boundary)]
                return
            if at > 0:
                del self._buf[: at + 1]
                continue
            keep = len(self._dash_boundary) + 2
            if len(self._buf) > keep:
                del self._buf[: len(self._buf) - keep]
            if not self._fill():
                raise MultipartError("no multipart boundary in body")

    def _after_delimiter(self) -> bool:
        """Consume what follows a delimiter; False at the closing ``--``."""
        self._need(2)
        if self._buf[:2] == b"--":
            return False
        # Transport padding (spaces, tabs) may precede the line break.
        while True:
            self._need(1)
            if self._buf[0] not in b" \t":
                break
            del self._buf[0]
        self._need(2)
        if self._buf[:2] != b"\r\n":
            raise MultipartError("boundary not followed by CRLF")
        del self._buf[:2]
        return True

    def _headers(self) -> Part:
        self._need(2)
        if self._buf[:2] == b"\r\n":
            raise MultipartError("part without Content-Disposition")
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            if len(self._buf) > _MAX_HEADER_BLOCK:
                raise MultipartError("part headers too long")
            if not self._fill():
                raise MultipartError("unexpected end of part headers")
        block = bytes(self._buf[:end]).decode("utf-8", "replace")
        del self._buf[: end + 4]
        headers = HeaderParser().parsestr(block + "\r\n\r\n", headersonly=True)
        if headers.get_content_disposition() != "form-data":
            raise MultipartError("part is not form-data")
        name = headers.get_param("name", header="content-disposition")
        if isinstance(name, tuple):
            name = collapse_rfc2231_value(name)
        if not isinstance(name, str):
            raise MultipartError("part without a name")
        filename = headers.get_filename()
        content_type = headers.get("content-type")
        return Part(name, filename, None if content_type is None else str(content_type))

    def _content(self, part: Part) -> None:
        self._hasher = hashlib.sha256()
        delimiter = self._delimiter
        while True:
            at = self._buf.find(delimiter)
            if at >= 0:
                self._consume(part, bytes(self._buf[:at]))
                del self._buf[: at + len(delimiter)]
                break
            # Keep a tail that could be the start of a delimiter split across reads.
            safe = len(self._buf) - (len(delimiter) - 1)
            if safe > 0:
                self._consume(part, bytes(self._buf[:safe]))
                del self._buf[:safe]
            if not self._fill():
                raise MultipartError("unexpected end of part")
        part.sha256 = self._hasher.hexdigest()

    def _consume(self, part: Part, data: bytes) -> None:
        if not data:
            return
        part.size += len(data)
        if part.is_file:
            if part.size > self._max_file:
                raise PayloadTooLarge(f"file part exceeds {self._max_file} bytes")
            self._hasher.update(data)
            if len(part.head) < HEAD_BYTES:
                part.head += data[: HEAD_BYTES - len(part.head)]
            return
        if part.size > self._max_field:
            raise MultipartError(f"field {part.name!r} exceeds {self._max_field} bytes")
        part.value += data
        self._hasher.update(data)
