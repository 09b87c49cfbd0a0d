"""Keep-alive HTTP/1.1 connections for the Hatz client, over :mod:`http.client`.

One job: send a request on a pooled connection and return the whole answer, or
raise a :class:`TransportError` that says whether anything was sent. No
retries, no redirects, no cookies: the client has its own retry rule, and the
Hatz API never redirects.

* Connections are kept per origin (scheme, host, port), last used first, at
  most ``maxsize`` idle ones per origin (a busier moment opens more; the extra
  ones are closed when they come back). Thread-safe; never blocks.
* An idle connection is checked before it is reused: a socket that is readable
  while no request is outstanding was closed by the server (or holds stray
  data), so it is closed and a fresh one opened. This is what makes keep-alive
  safe for a non-idempotent ``POST``: a request is never written to a
  connection the server already dropped.
* Connect with ``connect_timeout`` (proxy ``CONNECT`` and TLS handshake
  included), then send and read with ``read_timeout``.
* HTTPS: certificate and host name checked against ``ca_bundle`` (a file or a
  directory), else certifi's bundle. A proxy (``http://[user:pass@]host:port``)
  tunnels https targets with ``CONNECT`` and gets absolute-form requests for
  http targets.
* Bodies are bytes or a sized iterable of bytes, always sent with a
  Content-Length, never chunked.
* After a fork (Celery's prefork pool) the child drops the connections it
  inherited and opens its own.
"""

from __future__ import annotations

import base64
import http.client
import os
import select
import ssl
import threading
from collections.abc import Iterable, Mapping, Sized
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import certifi

from worker.hatz.headers import read_headers

#: What :meth:`HttpPool.urlopen` sends: nothing, bytes, or a sized iterable of bytes.
Body = bytes | Iterable[bytes] | None

_Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class TransportError(Exception):
    """No HTTP answer arrived. The underlying exception is ``__cause__`` (also ``cause``)."""

    @property
    def cause(self) -> BaseException | None:
        """The exception from the socket, ssl or http.client layer, if any."""
        return self.__cause__


class ConnectFailed(TransportError):
    """The connection could not be opened (refused, DNS, TLS, proxy): nothing was sent."""


class ConnectTimedOut(ConnectFailed):
    """Opening the connection took longer than the connect timeout: nothing was sent."""


class ReadTimedOut(TransportError):
    """The request was sent (maybe in part) and no answer came within the read timeout."""


class ConnectionLost(TransportError):
    """The connection failed after sending began: the request may have reached the server.

    (Reset, broken pipe, closed before or during the answer, malformed answer.)
    """


@dataclass(frozen=True, slots=True)
class Response:
    """A complete HTTP answer; ``headers`` are looked up case-insensitively."""

    status: int
    reason: str
    headers: http.client.HTTPMessage
    data: bytes

    @classmethod
    def build(
        cls,
        status: int,
        data: bytes = b"",
        headers: Mapping[str, str] | None = None,
        reason: str = "",
    ) -> Response:
        """A response made up in code (tests, fakes)."""
        message = http.client.HTTPMessage()
        for name, value in (headers or {}).items():
            message[name] = value
        return cls(status, reason, message, data)


class _Answer(http.client.HTTPResponse):
    """``http.client``'s response, its header block read by :func:`read_headers`.

    ``begin`` is ``http.client.HTTPResponse.begin`` (CPython 3.11-3.13) with
    :func:`worker.hatz.headers.read_headers` in place of ``parse_headers``, which
    costs a tenth of the CPU for the same headers.
    """

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:  # skip any "100 Continue" answers
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            read_headers(self.fp)
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = read_headers(self.fp)
        encoding = self.headers.get("transfer-encoding") or ""
        self.chunked = encoding.lower() == "chunked"
        if self.chunked:
            self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if status in (204, 304) or 100 <= status < 200 or self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True


class _Connection(http.client.HTTPConnection):
    response_class = _Answer


class _TlsConnection(http.client.HTTPSConnection):
    response_class = _Answer


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """True if an idle connection can no longer be used (closed, or readable: EOF or junk)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed under us
        return True


def _proxy_parts(proxy: str) -> tuple[str, int, str | None]:
    """``(host, port, Proxy-Authorization value or None)`` of an ``http://`` proxy URL."""
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if parts.scheme != "http":
        raise ValueError(
            f"proxy scheme {parts.scheme!r} is not supported: use an http:// proxy URL"
        )
    if not parts.hostname:
        raise ValueError("proxy URL has no host")
    auth = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    return parts.hostname, parts.port or 80, auth


class HttpPool:
    """Keep-alive connections per origin; see the module docstring for the rules."""

    def __init__(
        self,
        connect_timeout: float,
        read_timeout: float,
        *,
        maxsize: int = 32,
        proxy: str | None = None,
        ca_bundle: str | None = None,
    ) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.maxsize = maxsize
        self.ca_bundle = ca_bundle
        self._proxy = _proxy_parts(proxy) if proxy else None
        self._ssl_context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._idle: dict[_Origin, list[http.client.HTTPConnection]] = {}
        self._pid = os.getpid()

    @property
    def proxy(self) -> str | None:
        """The proxy's address as ``http://host:port`` (credentials left out), or None."""
        if self._proxy is None:
            return None
        host, port, _ = self._proxy
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def __repr__(self) -> str:
        return f"HttpPool(proxy={self.proxy!r}, maxsize={self.maxsize})"

    # --- the one call -----------------------------------------------------------------

    def urlopen(
        self,
        method: str,
        url: str,
        *,
        body: Body = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one request and read the whole answer (any status); raise a TransportError."""
        parts = urlsplit(url)
        scheme = parts.scheme
        host = parts.hostname
        if scheme not in _DEFAULT_PORTS or not host:
            raise ValueError(f"not an http(s) URL with a host (scheme {scheme!r})")
        origin = (scheme, host, parts.port or _DEFAULT_PORTS[scheme])
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        headers = headers or {}
        names = {name.lower() for name in headers}
        extra: list[tuple[str, str]] = []
        if self._proxy is not None and scheme == "http":
            target = f"http://{parts.netloc.rpartition('@')[2]}{target}"
            if self._proxy[2] and "proxy-authorization" not in names:
                extra.append(("Proxy-Authorization", self._proxy[2]))
        if "content-length" not in names:
            if body is None:
                if method in _BODY_METHODS:
                    extra.append(("Content-Length", "0"))
            elif isinstance(body, Sized):
                extra.append(("Content-Length", str(len(body))))
            else:
                raise TypeError("a streamed body needs a length (it is never sent chunked)")

        conn = self._take(origin) or self._connect(origin)
        response: http.client.HTTPResponse | None = None
        try:
            # http.client adds Host and "Accept-Encoding: identity" (answers are never
            # compressed: nothing here decodes them) unless the caller set them.
            conn.putrequest(
                method,
                target,
                skip_host="host" in names,
                skip_accept_encoding="accept-encoding" in names,
            )
            for name, value in headers.items():
                conn.putheader(name, value)
            for name, value in extra:
                conn.putheader(name, value)
            conn.endheaders(body)
            response = conn.getresponse()
            data = response.read()
        except BaseException as exc:
            if response is not None:
                response.close()
            conn.close()
            where = f"{origin[1]}:{origin[2]}"
            if isinstance(exc, TimeoutError):
                raise ReadTimedOut(
                    f"no answer from {where} within {self.read_timeout:g} s"
                ) from exc
            if isinstance(exc, OSError | http.client.HTTPException):
                raise ConnectionLost(f"{type(exc).__name__} from {where}") from exc
            raise
        if response.will_close:
            conn.close()
        else:
            self._put(origin, conn)
        return Response(response.status, response.reason, response.headers, data)

    def clear(self) -> None:
        """Close the idle connections (ones in use are closed or kept when they come back)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        _close_all(idle)

    # --- connections ------------------------------------------------------------------

    def _take(self, origin: _Origin) -> http.client.HTTPConnection | None:
        """The most recently used idle connection to ``origin`` still open, or None."""
        if os.getpid() != self._pid:
            self._forget_inherited()
        while True:
            with self._lock:
                stack = self._idle.get(origin)
                conn = stack.pop() if stack else None
            if conn is None or not _dropped(conn):
                return conn
            conn.close()

    def _put(self, origin: _Origin, conn: http.client.HTTPConnection) -> None:
        if os.getpid() == self._pid:
            with self._lock:
                stack = self._idle.setdefault(origin, [])
                if len(stack) < self.maxsize:
                    stack.append(conn)
                    return
        conn.close()

    def _forget_inherited(self) -> None:
        """In a forked child: a new lock (the parent's may be held), the parent's sockets closed.

        Closing them here only closes this process's copies: no close_notify, no FIN
        while the parent still has them open.
        """
        self._lock = threading.Lock()
        idle, self._idle = self._idle, {}
        self._pid = os.getpid()
        _close_all(idle)

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            bundle = self.ca_bundle or certifi.where()
            if os.path.isdir(bundle):
                context = ssl.create_default_context(capath=bundle)
            else:
                context = ssl.create_default_context(cafile=bundle)
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context

    def _connect(self, origin: _Origin) -> http.client.HTTPConnection:
        """A new connection to ``origin`` (via the proxy if any), connected, read timeout set."""
        scheme, host, port = origin
        timeout = self.connect_timeout
        conn: http.client.HTTPConnection | None = None
        try:
            if self._proxy is None:
                if scheme == "https":
                    conn = _TlsConnection(host, port, timeout=timeout, context=self._context())
                else:
                    conn = _Connection(host, port, timeout=timeout)
            else:
                proxy_host, proxy_port, auth = self._proxy
                if scheme == "https":
                    conn = _TlsConnection(
                        proxy_host, proxy_port, timeout=timeout, context=self._context()
                    )
                    conn.set_tunnel(host, port, {"Proxy-Authorization": auth} if auth else None)
                else:
                    conn = _Connection(proxy_host, proxy_port, timeout=timeout)
            conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(self.read_timeout)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            via = f" via proxy {self.proxy}" if self._proxy else ""
            where = f"{host}:{port}{via}"
            if isinstance(exc, TimeoutError):
                raise ConnectTimedOut(f"no connection to {where} within {timeout:g} s") from exc
            if isinstance(exc, OSError | http.client.HTTPException):
                raise ConnectFailed(f"cannot connect to {where}: {type(exc).__name__}") from exc
            raise
        return conn


def _close_all(idle: Mapping[_Origin, list[http.client.HTTPConnection]]) -> None:
    for stack in idle.values():
        for conn in stack:
            conn.close()
