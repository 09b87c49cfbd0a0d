"""Small purpose-built HTTP servers on 127.0.0.1 for transport tests.

:class:`Server` hands every accepted connection to a handler in its own thread
and records what arrived (connections, requests, closes), so a test can check
*how* the client talked, not just what it got back. :class:`ForwardProxy` is a
tiny HTTP proxy: absolute-form requests are forwarded, ``CONNECT`` is tunnelled.
Nothing here sleeps: tests wait on conditions with deadlines.
"""

from __future__ import annotations

import base64
import http.client
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import urlsplit

WAIT = 10.0  # seconds: the deadline of every wait here


@dataclass
class Request:
    """One request as it arrived: ``headers`` keyed by lower-case name."""

    conn_id: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    chunked: bool = False


@dataclass
class Conn:
    """One accepted connection, as a handler sees it."""

    server: Server
    id: int
    sock: socket.socket
    rfile: BinaryIO
    requests: list[Request] = field(default_factory=list)

    def read_request(self) -> Request | None:
        """The next request on this connection, or None at EOF."""
        line = self.rfile.readline(65537)
        if not line:
            return None
        method, target, _ = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        headers: dict[str, str] = {}
        while (header := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if chunked:
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            body = b"".join(parts)
        else:
            body = self.rfile.read(int(headers.get("content-length", "0")))
        request = Request(self.id, method, target, headers, body, chunked)
        self.requests.append(request)
        self.server._note(request)
        return request

    def respond(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        reason: str = "OK",
    ) -> None:
        """Send one answer with a Content-Length (plus ``headers``)."""
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


Handler = Callable[[Conn], None]


def echo(conn: Conn) -> None:
    """Keep-alive: answer every request with 200 and ``METHOD target`` as the body."""
    while (request := conn.read_request()) is not None:
        conn.respond(200, f"{request.method} {request.target}".encode())


class Server:
    """Accept connections on 127.0.0.1 and run ``handler`` for each in a thread."""

    def __init__(self, handler: Handler = echo, *, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port: int = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.conns: list[Conn] = []
        self.requests: list[Request] = []
        self.closed: set[int] = set()  # connections whose handler returned (then closed here)
        self.errors: list[BaseException] = []  # e.g. TLS handshakes the client refused
        self._changed = threading.Condition()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepted = 0
        acceptor = threading.Thread(target=self._accept, name=f"loopback:{self.port}")
        self._threads.append(acceptor)
        acceptor.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        """Connections accepted so far."""
        with self._changed:
            return self._accepted

    def wait_for(self, condition: Callable[[], bool], what: str = "condition") -> None:
        """Wait until ``condition()`` (checked whenever something arrives); fail at WAIT."""
        deadline = time.monotonic() + WAIT
        with self._changed:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self._changed.wait(left)

    def _note(self, request: Request) -> None:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self._changed:
                if self.stop.is_set():
                    sock.close()
                    return
                conn_id = self._accepted
                self._accepted += 1
                self._socks.append(sock)
                self._changed.notify_all()
            thread = threading.Thread(target=self._serve, args=(conn_id, sock), daemon=True)
            with self._changed:
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn_id: int, sock: socket.socket) -> None:
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
                with self._changed:
                    self._socks.append(sock)
            with sock.makefile("rb") as rfile:
                conn = Conn(self, conn_id, sock, rfile)
                with self._changed:
                    self.conns.append(conn)
                self.handler(conn)
        except (OSError, ValueError) as exc:  # the client went away, or we are stopping
            with self._changed:
                self.errors.append(exc)
        finally:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            with self._changed:
                self.closed.add(conn_id)
                self._changed.notify_all()

    def requests_on(self, conn_id: int) -> list[Request]:
        with self._changed:
            return [r for r in self.requests if r.conn_id == conn_id]

    def close(self) -> None:
        """Stop accepting, cut every connection, wait for the threads."""
        self.stop.set()
        with suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        with self._changed:
            socks = list(self._socks)
        for sock in socks:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._changed:
            threads = list(self._threads)
        for thread in threads:
            thread.join(WAIT)
        for sock in socks:
            sock.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _relay(a: socket.socket, b: socket.socket, stop: threading.Event) -> None:
    """Copy bytes both ways until either side closes."""
    with selectors.DefaultSelector() as sel:
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.5):
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                data = source.recv(65536)
                if not data:
                    return
                key.data.sendall(data)


class ForwardProxy(Server):
    """An HTTP proxy: forwards absolute-form requests, tunnels ``CONNECT``.

    With ``credentials`` ("user:password") it answers 407 to requests without
    the matching ``Proxy-Authorization``. Every request it saw is in
    :attr:`requests` (``target`` as sent: absolute form or ``host:port``).
    """

    def __init__(self, credentials: str | None = None) -> None:
        self.credentials = credentials
        super().__init__(self._proxy)

    def _authorised(self, request: Request) -> bool:
        if self.credentials is None:
            return True
        expected = "Basic " + base64.b64encode(self.credentials.encode()).decode()
        return request.headers.get("proxy-authorization") == expected

    def _proxy(self, conn: Conn) -> None:
        while (request := conn.read_request()) is not None:
            if not self._authorised(request):
                conn.respond(407, b"", {"Proxy-Authenticate": 'Basic realm="test"'}, "Auth")
                return
            if request.method == "CONNECT":
                host, _, port = request.target.rpartition(":")
                with socket.create_connection((host, int(port)), timeout=WAIT) as upstream:
                    conn.sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    _relay(conn.sock, upstream, self.stop)
                return
            parts = urlsplit(request.target)
            assert parts.hostname is not None
            upstream_conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=WAIT)
            try:
                headers = {
                    k: v
                    for k, v in request.headers.items()
                    if k not in ("proxy-authorization", "proxy-connection", "host")
                }
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                upstream_conn.request(request.method, path, request.body or None, headers)
                answer = upstream_conn.getresponse()
                body = answer.read()
                passed = {
                    k: v
                    for k, v in answer.getheaders()
                    if k.lower() not in ("content-length", "connection", "transfer-encoding")
                }
                conn.respond(answer.status, body, passed, answer.reason)
            finally:
                upstream_conn.close()


@contextmanager
def serving(handler: Handler = echo, *, tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    """A :class:`Server` for the ``with`` block."""
    with Server(handler, tls=tls) as server:
        yield server
