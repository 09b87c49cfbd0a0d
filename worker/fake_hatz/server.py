"""HTTP plumbing: a threading HTTP/1.1 server with keep-alive that feeds :mod:`.dispatch`.

Built on :class:`http.server.ThreadingHTTPServer` (one daemon thread per
connection). Responses go out in a single write with Nagle disabled, so
keep-alive polling does not stall on delayed ACKs. Open connections are
tracked so that stopping the server really disconnects its clients instead of
leaving threads serving pooled connections after ``stop()``.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import socketserver
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .body import Body
from .dispatch import handle
from .headers import read_headers
from .messages import Request, Response, detail_response
from .state import FakeState

logger = logging.getLogger(__name__)

#: Unread body bytes drained after a response to keep the connection; more closes it.
_DRAIN_LIMIT = 1024 * 1024
_PHRASES = {status.value: status.phrase for status in HTTPStatus}
_date: tuple[int, str] = (0, "")  # (second, its Date header value), shared by all threads


class FakeHatzServer(ThreadingHTTPServer):
    """The listening server; ``state`` is shared by every request thread."""

    daemon_threads = True
    # Benchmarks open many connections at once; the default backlog of 5 drops SYNs.
    request_queue_size = 1024

    def __init__(self, host: str, port: int, state: FakeState) -> None:
        """Bind to ``host:port`` (port 0 picks a free port) without serving yet."""
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.state = state
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self.socket.getsockname()[1])

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host (slow, pointless here)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.socket.getsockname()[0])
        self.server_port = self.port

    def track(self, connection: socket.socket) -> None:
        """Remember an open client connection."""
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        """Forget a closed client connection."""
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut down every open client connection, waking the threads reading them."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # OSError: the client closed it already.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that vanish mid-request; log anything else."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        logger.exception("fake Hatz server error while serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-hatz/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    # Idle keep-alive connections are dropped after this many seconds.
    timeout = 120
    server: FakeHatzServer
    raw_requestline: bytes  # set by http.server before parse_request

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line; the call log records requests."""

    def parse_request(self) -> bool:
        """``http.server``'s parsing of an ``HTTP/1.0`` or ``HTTP/1.1`` request, with the
        header block read by :func:`worker.fake_hatz.headers.read_headers` (the same headers, at
        a tenth of the CPU); any other request line is left to ``http.server`` itself."""
        line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = line.split()
        if len(words) != 3 or words[2] not in ("HTTP/1.1", "HTTP/1.0"):
            return bool(super().parse_request())
        command, path, version = words
        self.requestline = line
        self.command, self.request_version = command, version
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path
        self.close_connection = version == "HTTP/1.0"
        try:
            self.headers = read_headers(self.rfile)
        except http.client.LineTooLong as err:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long", str(err))
            return False
        except http.client.HTTPException as err:
            self.send_error(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers", str(err)
            )
            return False
        connection = self.headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        if self.headers.get("Expect", "").lower() == "100-continue" and version == "HTTP/1.1":
            return bool(self.handle_expect_100())
        return True

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header's value, formatted once per second."""
        global _date
        if timestamp is not None:
            return str(super().date_time_string(timestamp))
        second = int(time.time())
        if _date[0] != second:
            _date = (second, str(super().date_time_string(second)))
        return _date[1]

    def _serve(self) -> None:
        request = self._request()
        if isinstance(request, Response):
            self._write(request)
            return
        try:
            response = handle(self.server.state, request)
        except Exception:
            logger.exception("fake Hatz handler failed on %s %s", self.command, self.path)
            response = detail_response(500, "Internal Server Error")
            response.close_connection = True
        if response.hang_up:
            self.close_connection = True
            return
        if not request.body.exhausted and not request.body.drain(_DRAIN_LIMIT):
            response.close_connection = True
        self._write(response)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def _request(self) -> Request | Response:
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        length: int | None = None
        raw_length = self.headers.get("Content-Length")
        if raw_length is not None and not chunked:
            try:
                length = int(raw_length)
            except ValueError:
                length = -1
            if length < 0:
                response = detail_response(400, "Invalid Content-Length header")
                response.close_connection = True
                return response
        parts = urlsplit(self.path)
        return Request(
            method=self.command,
            path=unquote(parts.path),
            target=self.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=self.headers,
            body=Body(self.rfile, length, chunked=chunked),
        )

    def _write(self, response: Response) -> None:
        if response.close_connection:
            self.close_connection = True
        phrase = _PHRASES.get(response.status, "")
        lines = [
            f"HTTP/1.1 {response.status} {phrase}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
            f"Content-Length: {len(response.body)}",
        ]
        if response.content_type:
            lines.append(f"Content-Type: {response.content_type}")
        lines.extend(f"{name}: {value}" for name, value in response.headers.items())
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        body = b"" if self.command == "HEAD" else response.body
        try:
            self.wfile.write(head + body)
        except OSError:
            self.close_connection = True
