"""Keep-alive HTTP/1.1 connections for the Hatz client, over urllib3.

One job: send a request on a pooled connection and return the whole answer, or
raise a :class:`TransportError` that says whether anything was sent. No
retries, no redirects, no cookies, no decoding: the client has its own retry
rule, and the Hatz API never redirects.

* One urllib3 connection pool per origin (scheme, host, port), looked up once
  and kept until :meth:`HttpPool.clear`; at most ``maxsize`` idle connections
  each (a busier moment opens more; the extra ones are closed when they come
  back). Thread-safe; never blocks.
* urllib3 checks an idle connection before it reuses it and opens a fresh one
  if the server closed it, so a non-idempotent ``POST`` is never written to a
  connection the server already dropped.
* Connect with ``connect_timeout`` (proxy ``CONNECT`` and TLS handshake
  included), then send and read with ``read_timeout``. A failure while
  connecting is told apart from one after sending by a connection class that
  marks its own connect errors (urllib3's exception classes alone cannot tell
  a TLS handshake failure from a TLS failure in the middle of an answer).
* HTTPS: certificate and host name checked against ``ca_bundle`` (a file or a
  directory), else certifi's bundle. A proxy (``http://[user:pass@]host:port``)
  tunnels https targets with ``CONNECT`` and gets absolute-form requests for
  http targets (urllib3's ``ProxyManager``).
* Bodies are bytes or a sized iterable of bytes, always sent with a
  Content-Length, never chunked.
* :meth:`HttpPool.stream` reads an answer in chunks instead (a document
  behind a presigned URL, copied to the archive without holding it whole).
* After a fork (Celery's prefork pool) the child drops the connections it
  inherited and opens its own (urllib3 does not notice a fork).

Cost: a ``GET`` to the loopback fake takes about 2.5 times the client CPU of
the hand-written ``http.client`` pool this replaces (210-300 us against 60-110
us on the 2-core benchmark VM: 100-150 us of it urllib3's own layers, 30-40 us
the ``email`` header parser); nothing in urllib3's options makes it cheaper
(``preload_content=False`` does not). Keep the pools per origin, the prebuilt
``Retry`` and the one ``urlopen`` per call: a ``PoolManager.urlopen`` per call
costs another 20-50 us.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import ssl
import threading
from collections.abc import Iterable, Iterator, Mapping, Sized
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies, proxy_bypass

import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    EmptyPoolError,
    NewConnectionError,
    ReadTimeoutError,
)

from config import ConfigError

#: What :meth:`HttpPool.urlopen` sends: nothing, bytes, or a sized iterable of bytes.
Body = bytes | Iterable[bytes] | None

_Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}
# No retries, no redirects, answers of every status returned as they are: built once,
# as urllib3 would build one per call from ``retries=False``.
_NO_RETRY = urllib3.Retry(total=False, redirect=False, raise_on_status=False)


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
    headers: Message
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
        message = Message()
        for name, value in (headers or {}).items():
            message[name] = value
        return cls(status, reason, message, data)


@dataclass(frozen=True, slots=True)
class StreamedResponse:
    """An answer whose body is read as it is consumed (:meth:`HttpPool.stream`)."""

    status: int
    reason: str
    headers: Message
    chunks: Iterator[bytes]


class _NotConnected(Exception):
    """Raised by our connections when connecting failed, so nothing was sent.

    Not a class urllib3 catches, so it reaches :meth:`HttpPool.urlopen` as it is
    (urllib3 still closes the connection and returns its slot to the pool).
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class _Connection(HTTPConnection):
    """urllib3's connection: its connect errors marked, the request sent under the read timeout."""

    #: Set per pool (``conn_kw``): the old pool sent under the read timeout, and
    #: urllib3 would send under the connect timeout, too short for a slow upload.
    send_timeout: float | None = None

    def __init__(self, *args: Any, send_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.send_timeout = send_timeout

    def connect(self) -> None:
        """Connect (TCP, proxy tunnel, TLS) or raise :class:`_NotConnected`."""
        try:
            super().connect()
        except Exception as exc:
            raise _NotConnected(exc) from exc

    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Connect first if need be (connect timeout), then send under the send timeout."""
        if self.sock is None:
            self.connect()
        if self.send_timeout is not None:
            self.timeout = self.send_timeout
        super().request(method, url, body, headers, **kwargs)


class _TlsConnection(_Connection, HTTPSConnection):
    """The same for HTTPS (urllib3's TLS connect: handshake, certificate and name check)."""


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TlsPool(HTTPSConnectionPool):
    ConnectionCls = _TlsConnection


class ProxyURLError(ConfigError, ValueError):
    """Raised when the proxy named by the environment cannot be used (not ``http://``)."""


_PROXY_VARIABLES = "HTTPS_PROXY / HTTP_PROXY / ALL_PROXY"


def check_proxy_url(proxy: str) -> None:
    """Raise :class:`ProxyURLError` (naming the variables, never the credentials) unless
    ``proxy`` is an ``http://`` proxy URL with a host."""
    _proxy_parts(proxy)


def _proxy_parts(proxy: str) -> tuple[str, int, str | None]:
    """``(host, port, Proxy-Authorization value or None)`` of an ``http://`` proxy URL."""
    try:
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        hostname, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ProxyURLError(f"{_PROXY_VARIABLES}: the proxy URL is malformed ({exc})") from None
    if parts.scheme != "http":
        raise ProxyURLError(
            f"{_PROXY_VARIABLES}: proxy scheme {parts.scheme!r} is not supported "
            f"(proxy {parts.scheme}://{hostname or '?'}); use an http:// proxy URL"
        )
    if not hostname:
        raise ProxyURLError(f"{_PROXY_VARIABLES}: the proxy URL has no host")
    auth = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    return hostname, port or 80, auth


def _root(exc: BaseException) -> BaseException:
    """The socket, ssl or http.client exception under urllib3's (and our) wrappers."""
    seen = 0
    while isinstance(exc, urllib3.exceptions.HTTPError | _NotConnected) and seen < 8:
        seen += 1
        inner = next((a for a in exc.args if isinstance(a, BaseException)), None)
        inner = inner or exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return exc


def _bypasses_proxy(host: str) -> bool:
    """True if ``NO_PROXY``/``no_proxy`` lists ``host`` (names, suffixes, ``*``; and, as
    ``requests`` did, CIDR blocks for a host given as an IP address)."""
    if proxy_bypass(host):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    entries = (os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or "").split(",")
    for entry in entries:
        with suppress(ValueError):
            if "/" in entry and address in ipaddress.ip_network(entry.strip(), strict=False):
                return True
    return False


def environment_proxy(url: str) -> str | None:
    """The proxy for ``url`` from the environment (``HTTPS_PROXY``/``HTTP_PROXY``/
    ``ALL_PROXY``, less ``NO_PROXY``), as ``requests`` reads it; None for none."""
    parts = urlsplit(url)
    if _bypasses_proxy(parts.hostname or ""):
        return None
    proxies = getproxies()
    return proxies.get(parts.scheme) or proxies.get("all") or None


def _message(answer: Any) -> Message:
    """An answer's header block as http.client parsed it.

    urllib3 keeps it (an email Message, in arrival order, as requests reads it for
    cookies) on the original response; its own HTTPHeaderDict is a copy.
    """
    original = getattr(answer, "_original_response", None)
    message = getattr(original, "msg", None)
    if not isinstance(message, Message):
        message = Response.build(0, b"", answer.headers).headers
    return message


def environment_ca_bundle() -> str | None:
    """The CA bundle named by ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``, or None (certifi's)."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


class HttpPool:
    """Keep-alive connections per origin over urllib3; see the module docstring for the rules."""

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
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._ssl_context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._pools: dict[_Origin, HTTPConnectionPool] = {}
        self._manager = self._new_manager()
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
        origin, target = self._split(url)
        headers = self._framed(method, body, headers or {})
        pool = self._pool(origin)
        try:
            answer = pool.urlopen(
                method,
                target,
                body=body,  # a sized iterable is framed above
                headers=headers,
                retries=_NO_RETRY,
                redirect=False,
                assert_same_host=False,
                decode_content=False,
            )
        except Exception as exc:
            failure = self._failure(exc, origin)
            if failure is None:
                raise
            raise failure from _root(exc)
        return Response(answer.status, answer.reason or "", _message(answer), answer.data)

    @contextmanager
    def stream(
        self, url: str, *, headers: Mapping[str, str] | None = None, chunk_size: int = 256 * 1024
    ) -> Iterator[StreamedResponse]:
        """``GET url``; yield the answer (any status) with its body read in chunks.

        Raises a :class:`TransportError` when no answer arrived, and from the
        chunks when the body breaks off.
        """
        origin, target = self._split(url)
        try:
            answer = self._pool(origin).urlopen(
                "GET",
                target,
                headers=dict(headers or {}),
                retries=_NO_RETRY,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
            )
        except Exception as exc:
            failure = self._failure(exc, origin)
            if failure is None:
                raise
            raise failure from _root(exc)

        def chunks() -> Iterator[bytes]:
            try:
                yield from answer.stream(chunk_size, decode_content=False)
            except Exception as exc:
                failure = self._failure(exc, origin)
                if failure is None:
                    raise
                raise failure from _root(exc)

        try:
            yield StreamedResponse(answer.status, answer.reason or "", _message(answer), chunks())
        finally:
            if not answer.closed:
                answer.close()  # not read to the end: the connection cannot be reused
            answer.release_conn()

    def clear(self) -> None:
        """Close the idle connections (ones in use are closed when they come back)."""
        with self._lock:
            self._pools = {}
            self._manager.clear()

    # --- steps ------------------------------------------------------------------------

    def _split(self, url: str) -> tuple[_Origin, str]:
        """The origin a URL goes to and the request target sent to it."""
        parts = urlsplit(url)
        scheme = parts.scheme
        host = parts.hostname
        if scheme not in _DEFAULT_PORTS or not host:
            raise ValueError(f"not an http(s) URL with a host (scheme {scheme!r})")
        origin = (scheme, host, parts.port or _DEFAULT_PORTS[scheme])
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        if self._proxy is not None and scheme == "http":
            target = f"http://{parts.netloc.rpartition('@')[2]}{target}"
        return origin, target

    @staticmethod
    def _framed(method: str, body: Body, headers: Mapping[str, str]) -> Mapping[str, str]:
        """``headers``, with a Content-Length for a sized iterable body (urllib3 would chunk it)."""
        if body is None or isinstance(body, bytes | bytearray | memoryview):
            return headers  # urllib3 adds the length (0 for a bodiless POST, PUT, PATCH)
        if any(name.lower() == "content-length" for name in headers):
            return headers
        if not isinstance(body, Sized):
            raise TypeError("a streamed body needs a length (it is never sent chunked)")
        return {**headers, "Content-Length": str(len(body))}

    def _failure(self, exc: Exception, origin: _Origin) -> TransportError | None:
        """The :class:`TransportError` for what urllib3 raised (None: not a transport failure)."""
        where = f"{origin[1]}:{origin[2]}"
        if isinstance(exc, _NotConnected):
            via = f" via proxy {self.proxy}" if self._proxy else ""
            inner = exc.error
            timed_out = isinstance(inner, ConnectTimeoutError) and not isinstance(
                inner, NewConnectionError
            )
            if timed_out or isinstance(_root(inner), TimeoutError):
                limit = self.connect_timeout
                return ConnectTimedOut(f"no connection to {where}{via} within {limit:g} s")
            return ConnectFailed(f"cannot connect to {where}{via}: {type(_root(inner)).__name__}")
        if isinstance(exc, ReadTimeoutError):
            return ReadTimedOut(f"no answer from {where} within {self.read_timeout:g} s")
        if isinstance(exc, ClosedPoolError | EmptyPoolError):  # cleared meanwhile: not sent
            return ConnectFailed(f"cannot connect to {where}: {type(exc).__name__}")
        if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
            return ConnectionLost(f"{type(_root(exc)).__name__} from {where}")
        return None

    def _pool(self, origin: _Origin) -> HTTPConnectionPool:
        """The connection pool for ``origin`` (made on first use; a fresh set after a fork)."""
        if os.getpid() != self._pid:
            self._forget_inherited()
        pool = self._pools.get(origin)
        if pool is None:
            with self._lock:
                pool = self._pools.get(origin)
                if pool is None:
                    scheme, host, port = origin
                    # The SSL context is ours (CA bundle, ALPN), made on first https use.
                    options = {"ssl_context": self._context()} if scheme == "https" else None
                    pool = self._manager.connection_from_host(
                        host, port, scheme, pool_kwargs=options
                    )
                    pool.conn_kw["send_timeout"] = self.read_timeout
                    self._pools[origin] = pool
        return pool

    def _new_manager(self) -> urllib3.PoolManager:
        """A pool manager (a proxy manager with a proxy) making our connection pools."""
        options: dict[str, Any] = {
            # Pools are kept in self._pools until clear(): the manager must not evict one.
            "num_pools": 1000,
            "maxsize": self.maxsize,
            "block": False,
            "timeout": self._timeout,
            "retries": _NO_RETRY,
        }
        manager: urllib3.PoolManager
        if self._proxy is None or self.proxy is None:
            manager = urllib3.PoolManager(**options)
        else:
            auth = self._proxy[2]
            manager = urllib3.ProxyManager(
                self.proxy,
                proxy_headers={"Proxy-Authorization": auth} if auth else None,
                **options,
            )
        manager.pool_classes_by_scheme = {"http": _Pool, "https": _TlsPool}
        return manager

    def _forget_inherited(self) -> None:
        """In a forked child: a new lock (the parent's may be held), the parent's sockets closed.

        Closing them here only closes this process's copies: no close_notify, no FIN
        while the parent still has them open.
        """
        self._lock = threading.Lock()
        inherited, self._manager = self._manager, self._new_manager()
        self._pools = {}
        self._pid = os.getpid()
        inherited.clear()

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
