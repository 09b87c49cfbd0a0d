"""One webhook POST to a pinned address, with a real total deadline.

``requests`` resolves names itself and only bounds each socket operation, so a
receiver that answers one byte every few seconds can hold a worker for ever,
and the address it connects to is not the one the SSRF guard checked. Here the
connection goes to :attr:`Target.address` (already checked), the ``Host``
header and TLS SNI/certificate check use the URL's host name, redirects are
never followed (``http.client`` does not), and a timer shuts the socket down
when the total deadline passes, whatever the receiver does.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

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


def _connect(target: Target, connect_timeout: float) -> socket.socket:
    try:
        return socket.create_connection((target.address, target.port), timeout=connect_timeout)
    except TimeoutError:
        raise DeliveryError("timeout", f"connect timed out after {connect_timeout:g} s") from None
    except OSError as exc:
        raise DeliveryError("connect", exc.strerror or type(exc).__name__) from None


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
    deadline = time.monotonic() + total_timeout
    sock = _connect(target, min(connect_timeout, total_timeout))
    expired = threading.Event()

    def abort() -> None:
        expired.set()
        # The base-class shutdown also works on an SSLSocket, from another thread,
        # and wakes a recv blocked on a receiver that trickles bytes.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), abort)
    timer.daemon = True
    timer.start()
    try:
        if target.scheme == "https":
            context = ssl_context or ssl.create_default_context()
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock = context.wrap_socket(sock, server_hostname=target.host)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        conn = http.client.HTTPConnection(target.host, target.port)
        conn.sock = sock
        conn.putrequest("POST", target.path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", target.host_header)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.putheader("Connection", "close")
        conn.endheaders(body)
        answer = conn.getresponse()
        excerpt = answer.read(MAX_BODY_READ)
        if expired.is_set():
            raise DeliveryError("timeout", f"no complete answer within {total_timeout:g} s")
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, excerpt)
    except DeliveryError:
        raise
    except (ssl.SSLCertVerificationError, ssl.CertificateError) as exc:
        raise DeliveryError("tls", getattr(exc, "verify_message", None) or str(exc)) from None
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        if expired.is_set() or isinstance(exc, TimeoutError):
            raise DeliveryError(
                "timeout", f"no complete answer within {total_timeout:g} s"
            ) from None
        if isinstance(exc, ssl.SSLError):
            raise DeliveryError("tls", type(exc).__name__) from None
        if isinstance(exc, http.client.HTTPException):
            raise DeliveryError("protocol", type(exc).__name__) from None
        raise DeliveryError("connect", exc.strerror or type(exc).__name__) from None
    finally:
        timer.cancel()
        sock.close()
