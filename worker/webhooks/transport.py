"""One webhook POST (or one streamed GET) to a pinned address, with a real total deadline.

A plain ``requests``/``PoolManager`` call resolves names itself, reads proxy
variables and only bounds each socket operation, so a receiver that answers one
byte every few seconds could hold a worker for ever, and the address it
connects to would not be the one the SSRF guard checked. Here one urllib3
connection (no pool: one request, ``Connection: close``) goes to
:attr:`Target.address` (already checked), the ``Host`` header and TLS
SNI/certificate check use the URL's host name, redirects are never followed
(a connection does not), no proxy is ever used, and a timer shuts the socket
down when the total deadline passes, whatever the receiver does. At most
:data:`MAX_BODY_READ` bytes of the answer are read.

:func:`get_stream` is the same exchange for a download (``https://`` file
inputs, :mod:`worker.files`): a ``GET`` whose body is read in chunks under the
same deadline, so a slow or endless server never holds a worker past it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import urllib3
from urllib3.connection import HTTPConnection, HTTPException, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError
from urllib3.util import SKIP_HEADER
from urllib3.util.ssl_match_hostname import CertificateError as NameMismatch

from worker.webhooks.ssrf import Target

#: Bytes of a response body read at most: enough for an error message, never a flood.
MAX_BODY_READ = 1024


class DeliveryError(Exception):
    """Raised when no HTTP answer arrived: connect failure, TLS failure, or timeout.

    ``kind`` is ``"connect"``, ``"tls"``, ``"timeout"`` or ``"protocol"``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclass(frozen=True)
class Response:
    """A receiver's answer: status, lower-cased headers, the first bytes of the body."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


def _connection(
    target: Target, timeout: float, ssl_context: ssl.SSLContext | None
) -> HTTPConnection:
    """An unopened connection to the checked address, TLS checked against the URL's host."""
    if target.scheme != "https":
        return HTTPConnection(target.address, target.port, timeout=timeout)
    return HTTPSConnection(
        target.address,
        target.port,
        timeout=timeout,
        # SNI and the certificate's name check (the context's own) use the URL's host.
        server_hostname=target.host,
        ssl_context=ssl_context or ssl.create_default_context(),
    )


def _connect(conn: HTTPConnection, connect_timeout: float) -> None:
    """TCP connect and TLS handshake, or :class:`DeliveryError`."""
    try:
        conn.connect()
    except ConnectTimeoutError as exc:
        if not isinstance(exc, NewConnectionError):
            raise DeliveryError(
                "timeout", f"connect timed out after {connect_timeout:g} s"
            ) from None
        cause = exc.__cause__
        reason = cause.strerror if isinstance(cause, OSError) else None
        raise DeliveryError("connect", reason or type(cause or exc).__name__) from None


def _headers(target: Target, headers: Mapping[str, str]) -> dict[str, str]:
    """What is sent: the URL's Host, the caller's headers, one request per connection."""
    sent = {"Host": target.host_header, **headers, "Connection": "close"}
    names = {name.lower() for name in sent}
    # Nothing urllib3 or http.client would add on their own (a User-Agent, an
    # Accept-Encoding): the receiver sees the headers we sign and frame, only.
    for name in ("User-Agent", "Accept-Encoding"):
        if name.lower() not in names:
            sent[name] = SKIP_HEADER
    return sent


def _root(exc: BaseException) -> BaseException:
    """The socket, ssl or http.client exception under urllib3's wrappers."""
    for _ in range(8):
        if not isinstance(exc, urllib3.exceptions.HTTPError):
            break
        inner = next((a for a in exc.args if isinstance(a, BaseException)), None)
        inner = inner or exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return exc


def _failure(exc: BaseException, expired: bool, total_timeout: float) -> DeliveryError | None:
    """The :class:`DeliveryError` for an exception of the exchange (None: not ours to map)."""
    if isinstance(exc, DeliveryError):
        return exc
    root = _root(exc)
    timed_out = isinstance(exc, ReadTimeoutError) or isinstance(root, TimeoutError)
    if expired or timed_out:
        return DeliveryError("timeout", f"no complete answer within {total_timeout:g} s")
    if isinstance(root, ssl.SSLCertVerificationError):
        return DeliveryError("tls", getattr(root, "verify_message", None) or str(root))
    if isinstance(root, NameMismatch):  # urllib3's own name check
        return DeliveryError("tls", str(root))
    if isinstance(root, ssl.SSLError):
        return DeliveryError("tls", type(root).__name__)
    if isinstance(root, HTTPException):
        return DeliveryError("protocol", type(root).__name__)
    if isinstance(root, OSError):
        return DeliveryError("connect", root.strerror or type(root).__name__)
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return DeliveryError("protocol", type(root).__name__)
    return None


class _Deadline:
    """A timer that shuts a connection's socket down when the total deadline passes."""

    def __init__(self, conn: HTTPConnection, total_timeout: float) -> None:
        self.conn = conn
        self.total_timeout = total_timeout
        self.at = time.monotonic() + total_timeout
        self.expired = threading.Event()
        self._timer = threading.Timer(total_timeout, self._abort)
        self._timer.daemon = True

    def _abort(self) -> None:
        self.expired.set()
        # The base-class shutdown also works on an SSLSocket, from another thread,
        # and wakes a recv blocked on a server that trickles bytes (or a handshake).
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def left(self) -> float:
        """Seconds until the deadline (at least a millisecond: a socket timeout of 0 blocks)."""
        return max(0.001, self.at - time.monotonic())

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self.conn.close()

    def failure(self, exc: Exception) -> DeliveryError | None:
        """The :class:`DeliveryError` for ``exc`` raised during the exchange, or None."""
        return _failure(exc, self.expired.is_set(), self.total_timeout)


@dataclass(frozen=True)
class StreamedResponse:
    """A download's answer: status, lower-cased headers, and its body in chunks."""

    status: int
    headers: Mapping[str, str]
    chunks: Iterator[bytes]


@contextlib.contextmanager
def get_stream(
    target: Target,
    headers: Mapping[str, str],
    *,
    connect_timeout: float,
    total_timeout: float,
    chunk_size: int = 256 * 1024,
    ssl_context: ssl.SSLContext | None = None,
) -> Iterator[StreamedResponse]:
    """GET ``target`` and yield its answer, the body read in chunks as it is consumed.

    The whole exchange, reading the body included, ends within ``total_timeout``
    seconds of the call; past it, reading raises :class:`DeliveryError` (``"timeout"``),
    as does any failure to connect or read.
    """
    conn = _connection(target, min(connect_timeout, total_timeout), ssl_context)
    with _Deadline(conn, total_timeout) as deadline:
        try:
            _connect(conn, min(connect_timeout, total_timeout))
            conn.timeout = deadline.left()
            conn.request(
                "GET",
                target.path,
                headers=_headers(target, headers),
                preload_content=False,
                decode_content=False,  # the bytes as served (we ask for no encoding)
            )
            conn.timeout = deadline.left()
            answer = conn.getresponse()
        except Exception as exc:
            failure = deadline.failure(exc)
            if failure is None or failure is exc:
                raise
            raise failure from None

        def chunks() -> Iterator[bytes]:
            try:
                while True:
                    # Checked between reads too: a server that trickles bytes keeps each
                    # read short, and a TLS read may not wake on the timer's shutdown.
                    if deadline.expired.is_set():
                        raise DeliveryError(
                            "timeout", f"no complete answer within {total_timeout:g} s"
                        )
                    if conn.sock is not None:
                        conn.sock.settimeout(deadline.left())
                    chunk = answer.read1(chunk_size)
                    if not chunk:
                        break
                    yield chunk
                if deadline.expired.is_set():
                    raise DeliveryError("timeout", f"no complete answer within {total_timeout:g} s")
            except Exception as exc:
                failure = deadline.failure(exc)
                if failure is None or failure is exc:
                    raise
                raise failure from None

        try:
            yield StreamedResponse(
                answer.status, {k.lower(): v for k, v in answer.headers.items()}, chunks()
            )
        finally:
            answer.close()  # its file object holds the socket open past conn.close()


def post(
    target: Target,
    body: bytes,
    headers: Mapping[str, str],
    *,
    connect_timeout: float,
    total_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> Response:
    """POST ``body`` to ``target``; return the answer or raise :class:`DeliveryError`.

    The whole exchange (connect, TLS, send, status line, headers, body excerpt)
    ends within ``total_timeout`` seconds. ``ssl_context`` defaults to the
    system trust store with hostname checking (tests pass their own CA).
    """
    conn = _connection(target, min(connect_timeout, total_timeout), ssl_context)
    with _Deadline(conn, total_timeout) as deadline:
        try:
            _connect(conn, min(connect_timeout, total_timeout))
            conn.timeout = deadline.left()
            conn.request(
                "POST",
                target.path,
                body=body,
                headers=_headers(target, headers),
                preload_content=False,
                decode_content=False,
                # A short body is returned as it is (an excerpt), not an error.
                enforce_content_length=False,
            )
            conn.timeout = deadline.left()
            answer = conn.getresponse()
            excerpt = answer.read(MAX_BODY_READ)
            if deadline.expired.is_set():
                raise DeliveryError("timeout", f"no complete answer within {total_timeout:g} s")
            headers_out = {k.lower(): v for k, v in answer.headers.items()}
            return Response(answer.status, headers_out, excerpt)
        except Exception as exc:
            failure = deadline.failure(exc)
            if failure is None or failure is exc:
                raise
            raise failure from None
