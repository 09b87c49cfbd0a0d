"""The Hatz client's transport (worker.hatz.transport) against real servers on 127.0.0.1:
keep-alive reuse, dropped and closed connections, each failure's class, streamed
bodies, a forward proxy, HTTPS with a certificate made here, threads, fork."""

from __future__ import annotations

import base64
import http.client
import os
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.loopback import WAIT, Conn, ForwardProxy, echo, serving
from worker.fake_hatz import CODING_APP_ID, FakeHatz, seed_default_apps
from worker.hatz.client import HatzClient
from worker.hatz.transport import (
    ConnectFailed,
    ConnectionLost,
    ConnectTimedOut,
    HttpPool,
    ReadTimedOut,
    Response,
)

PROXY_VARIABLES = [
    f"{name}{suffix}" for name in ("http", "https", "all", "no") for suffix in ("_proxy", "_PROXY")
]


@pytest.fixture
def pool() -> Iterator[HttpPool]:
    p = HttpPool(2.0, 2.0)
    yield p
    p.clear()


def idle_connections(pool: HttpPool) -> dict[tuple[str, str, int], list[Any]]:
    """The open idle connections per origin (white box: urllib3's pool queues)."""
    return {
        origin: [c for c in list(p.pool.queue) if c is not None and c.sock is not None]
        for origin, p in pool._pools.items()
        if p.pool is not None
    }


def idle_socket(pool: HttpPool) -> socket.socket:
    """The one idle pooled connection's socket (white box: the drop tests wait on it)."""
    (stack,) = idle_connections(pool).values()
    (conn,) = stack
    assert conn.sock is not None
    return conn.sock  # type: ignore[no-any-return]


def wait_readable(sock: socket.socket) -> None:
    """Wait until the server's FIN (or data) reached ``sock``."""
    readable, _, _ = select.select([sock], [], [], WAIT)
    assert readable, "the server's close never arrived"


# --- keep-alive -----------------------------------------------------------------------


def test_requests_to_one_origin_reuse_one_keep_alive_connection(pool: HttpPool) -> None:
    with serving() as server:
        answers = [pool.urlopen("GET", f"{server.url}/v1/jobs/{i}?x=1") for i in range(5)]
        posted = pool.urlopen("POST", f"{server.url}/v1/run", body=b'{"a": 1}')
        empty = pool.urlopen("POST", f"{server.url}/v1/empty")

        assert [a.status for a in answers] == [200] * 5
        assert [a.data for a in answers] == [f"GET /v1/jobs/{i}?x=1".encode() for i in range(5)]
        assert posted.data == b"POST /v1/run"
        assert empty.status == 200
        assert server.accepted == 1
        assert [r.conn_id for r in server.requests] == [0] * 7
        assert server.requests[5].body == b'{"a": 1}'
        assert server.requests[5].headers["content-length"] == "8"
        assert server.requests[6].headers["content-length"] == "0"
        assert server.requests[0].headers["host"] == f"127.0.0.1:{server.port}"
        assert server.requests[0].headers["accept-encoding"] == "identity"  # never compressed


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_idle_connection_the_server_dropped_is_replaced_before_sending(
    pool: HttpPool, method: str
) -> None:
    def answer_once_then_hang_up(conn: Conn) -> None:
        if conn.read_request() is not None:
            conn.respond(200, b"first")  # keep-alive answer, then the server closes

    def answer_all(conn: Conn) -> None:
        if conn.id == 0:
            answer_once_then_hang_up(conn)
        else:
            echo(conn)

    with serving(answer_all) as server:
        assert pool.urlopen("GET", f"{server.url}/a").data == b"first"
        wait_readable(idle_socket(pool))  # the server's FIN is here

        second = pool.urlopen(method, f"{server.url}/b", body=b"once" if method == "POST" else None)

        assert second.data == f"{method} /b".encode()
        assert server.accepted == 2
        assert [r.target for r in server.requests_on(0)] == ["/a"]
        assert [(r.target, r.body) for r in server.requests_on(1)] == [
            ("/b", b"once" if method == "POST" else b"")
        ]


def test_a_connection_close_answer_is_not_reused(pool: HttpPool) -> None:
    def answer_close_but_stay_open(conn: Conn) -> None:
        while conn.read_request() is not None:  # a second request here would be a reuse
            conn.respond(200, b"bye", {"Connection": "close"})

    with serving(answer_close_but_stay_open) as server:
        for _ in range(3):
            assert pool.urlopen("GET", f"{server.url}/x").data == b"bye"

        assert server.accepted == 3
        assert [len(server.requests_on(i)) for i in range(3)] == [1, 1, 1]
        assert idle_connections(pool).get(("http", "127.0.0.1", server.port), []) == []


def test_clear_closes_idle_connections(pool: HttpPool) -> None:
    with serving() as server:
        pool.urlopen("GET", f"{server.url}/x")
        pool.clear()

        server.wait_for(lambda: 0 in server.closed, "the server to see the close")
        pool.urlopen("GET", f"{server.url}/y")
        assert server.accepted == 2


def test_idle_connections_per_origin_are_kept_up_to_maxsize() -> None:
    # Three requests at once on connections of their own; maxsize 1 keeps one of them.
    barrier = threading.Barrier(3, timeout=WAIT)

    def answer_in_threes(conn: Conn) -> None:
        while conn.read_request() is not None:
            barrier.wait()
            conn.respond(200, b"ok")

    def three_at_once(p: HttpPool, url: str) -> None:
        threads = [threading.Thread(target=p.urlopen, args=("GET", url)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)

    results = {}
    for maxsize in (1, 32):
        p = HttpPool(2.0, 5.0, maxsize=maxsize)
        with serving(answer_in_threes) as server:
            three_at_once(p, server.url)
            three_at_once(p, server.url)
            results[maxsize] = (server.accepted, len(server.requests))
        p.clear()

    # maxsize 1: 3 new, then 1 reused + 2 new; maxsize 32: all 3 reused
    assert results == {1: (5, 6), 32: (3, 6)}


def test_threads_share_the_pool_and_each_gets_its_own_answer() -> None:
    p = HttpPool(2.0, 5.0, maxsize=4)
    wrong: list[str] = []

    def client(n: int, url: str) -> None:
        for i in range(25):
            path = f"/t{n}/r{i}"
            answer = p.urlopen("GET", url + path)
            if answer.data != f"GET {path}".encode():
                wrong.append(f"{path}: {answer.data!r}")

    with serving() as server:
        threads = [threading.Thread(target=client, args=(n, server.url)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 3)

        assert not any(t.is_alive() for t in threads)
        assert wrong == []
        assert len(server.requests) == 8 * 25
        assert server.accepted < 8 * 25  # connections were reused
    p.clear()


def test_a_forked_child_drops_the_connections_it_inherited(
    pool: HttpPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serving() as server:
        pool.urlopen("GET", f"{server.url}/parent")
        parent = os.getpid()
        monkeypatch.setattr(os, "getpid", lambda: parent + 1)  # "in the child"

        pool.urlopen("GET", f"{server.url}/child")

        assert server.accepted == 2
        assert [r.target for r in server.requests_on(1)] == ["/child"]
        server.wait_for(lambda: 0 in server.closed, "the inherited connection to be closed")


# --- failures -----------------------------------------------------------------------------


def test_a_refused_connection_is_connect_failed(pool: HttpPool) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = unused.getsockname()[1]

        with pytest.raises(ConnectFailed) as info:
            pool.urlopen("POST", f"http://127.0.0.1:{port}/v1/run", body=b"{}")

    assert not isinstance(info.value, ConnectTimedOut)
    assert isinstance(info.value.cause, ConnectionRefusedError)


def test_a_full_listen_queue_is_a_connect_timeout() -> None:
    # A listener that never accepts, its queue filled: further SYNs are dropped.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers: list[socket.socket] = []
        try:
            for _ in range(8):
                filler = socket.socket()
                fillers.append(filler)
                filler.settimeout(0.2)
                try:
                    filler.connect(listener.getsockname())
                except TimeoutError:
                    break  # the queue is full
            else:
                pytest.skip("this kernel never drops SYNs to a full listen queue")
            p = HttpPool(0.3, 5.0)
            started = time.monotonic()

            with pytest.raises(ConnectTimedOut) as info:
                p.urlopen("GET", f"http://127.0.0.1:{listener.getsockname()[1]}/")

            assert time.monotonic() - started < 0.3 + WAIT / 2
            assert isinstance(info.value, ConnectFailed)  # nothing was sent
            assert isinstance(info.value.cause, TimeoutError)
        finally:
            for filler in fillers:
                filler.close()


def test_a_server_that_never_answers_is_a_read_timeout() -> None:
    p = HttpPool(2.0, 0.3)

    def swallow(conn: Conn) -> None:
        conn.read_request()
        conn.server.stop.wait(WAIT)

    with serving(swallow) as server:
        started = time.monotonic()
        with pytest.raises(ReadTimedOut) as info:
            p.urlopen("GET", f"{server.url}/slow")
        elapsed = time.monotonic() - started

        assert 0.25 <= elapsed < 0.3 + WAIT / 2
        assert isinstance(info.value.cause, TimeoutError)
        assert [r.target for r in server.requests] == ["/slow"]  # it was sent
    p.clear()


def test_a_server_that_closes_without_answering_is_connection_lost_and_not_retried(
    pool: HttpPool,
) -> None:
    def hang_up_on_the_first(conn: Conn) -> None:
        if conn.id == 0:
            conn.read_request()
            return  # closes without an answer
        echo(conn)

    with serving(hang_up_on_the_first) as server:
        with pytest.raises(ConnectionLost) as info:
            pool.urlopen("POST", f"{server.url}/v1/run", body=b"{}")

        assert isinstance(info.value.cause, http.client.RemoteDisconnected)
        assert len(server.requests) == 1  # never re-sent
        assert pool.urlopen("GET", f"{server.url}/next").status == 200
        assert server.accepted == 2  # the failed connection was not reused


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b", http.client.IncompleteRead),
        (b"SMTP ready\r\n\r\n", http.client.BadStatusLine),
        (b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", http.client.UnknownProtocol),
    ],
    ids=["truncated", "garbled status line", "another protocol"],
)
def test_a_broken_answer_is_connection_lost(
    pool: HttpPool, answer: bytes, cause: type[Exception]
) -> None:
    def broken(conn: Conn) -> None:
        conn.read_request()
        conn.sock.sendall(answer)

    with serving(broken) as server, pytest.raises(ConnectionLost) as info:
        pool.urlopen("GET", f"{server.url}/x")

    assert isinstance(info.value.cause, cause)


def test_redirects_and_errors_are_returned_as_they_are(pool: HttpPool) -> None:
    def answer(conn: Conn) -> None:
        while (request := conn.read_request()) is not None:
            if request.target == "/moved":
                conn.respond(302, b"", {"Location": "/elsewhere"}, "Found")
            else:
                conn.respond(503, b"later", {"retry-after": "3"}, "Unavailable")

    with serving(answer) as server:
        moved = pool.urlopen("GET", f"{server.url}/moved")
        busy = pool.urlopen("GET", f"{server.url}/busy")

        assert (moved.status, moved.reason, moved.headers.get("location")) == (
            302,
            "Found",
            "/elsewhere",
        )
        assert (busy.status, busy.data, busy.headers.get("Retry-After")) == (503, b"later", "3")
        assert [r.target for r in server.requests] == ["/moved", "/busy"]


# The answer's framing, as urllib3 reads it for worker.hatz.transport: each scripted
# answer must come out as plain http.client reads it.
ANSWERS = {
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    ),
    "100 continue first": (
        b"HTTP/1.1 100 Continue\r\nX-Skipped: yes\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    ),
    "http/1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "http/1.0 keep-alive": (
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    ),
    "no length: read to close": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil the end",
    "negative length": b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\nuntil the end",
    "204 without length": b"HTTP/1.1 204 No Content\r\n\r\n",
    "connection: close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    # (An obs-folded value is left out: urllib3 joins its lines with one space, as
    # RFC 9112 allows, where http.client keeps the line break.)
    "repeated headers": (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a\r\nSet-Cookie: b\r\nContent-Length: 0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("name", list(ANSWERS))
def test_an_answer_is_framed_as_http_client_frames_it(pool: HttpPool, name: str) -> None:
    def scripted(conn: Conn) -> None:
        conn.read_request()
        conn.sock.sendall(ANSWERS[name])
        # Returning closes the connection: answers without a length end there.

    with serving(scripted) as server:
        ours = pool.urlopen("GET", f"{server.url}/x")
        kept = sum(len(stack) for stack in idle_connections(pool).values())
    with serving(scripted) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
        try:
            conn.request("GET", "/x")
            stdlib = conn.getresponse()
            data = stdlib.read()
        finally:
            conn.close()

    assert (ours.status, ours.reason, ours.data) == (stdlib.status, stdlib.reason, data)
    assert ours.headers.items() == stdlib.headers.items()
    assert kept == (0 if stdlib.will_close else 1)


# --- bodies ---------------------------------------------------------------------------------


@dataclass
class Streamed:
    """A sized iterable body, like the client's multipart upload."""

    chunks: list[bytes]

    def __len__(self) -> int:
        return sum(len(c) for c in self.chunks)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)


def test_a_streamed_body_arrives_byte_exact_with_its_content_length(pool: HttpPool) -> None:
    chunks = [b"head\r\n", os.urandom(300_000), b"", bytes(range(256)) * 7, b"\r\ntail"]
    body = Streamed(chunks)

    with serving() as server:
        pool.urlopen(
            "POST",
            f"{server.url}/upload",
            body=body,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(body))},
        )
        unsized = pool.urlopen("POST", f"{server.url}/again", body=Streamed([b"abc"]))

        (request, again) = server.requests
        assert request.body == b"".join(chunks)
        assert request.headers["content-length"] == str(len(body))
        assert "transfer-encoding" not in request.headers
        assert not request.chunked
        assert unsized.status == 200
        assert again.headers["content-length"] == "3"


def test_a_streamed_body_without_a_length_is_refused_before_connecting(pool: HttpPool) -> None:
    with serving() as server:
        with pytest.raises(TypeError, match="never sent chunked"):
            pool.urlopen("POST", f"{server.url}/x", body=iter([b"a", b"b"]))

        assert server.accepted == 0


# --- proxy ------------------------------------------------------------------------------------


def test_http_through_a_proxy_sends_the_absolute_form_and_the_proxy_credentials() -> None:
    with serving() as origin, ForwardProxy(credentials="user:p@ss") as proxy:
        p = HttpPool(2.0, 2.0, proxy=f"http://user:p%40ss@127.0.0.1:{proxy.port}")

        first = p.urlopen("GET", f"{origin.url}/v1/jobs/1?x=1", headers={"X-API-Key": "k"})
        second = p.urlopen("POST", f"{origin.url}/v1/run", body=b"{}")
        p.clear()

        assert (first.status, first.data) == (200, b"GET /v1/jobs/1?x=1")
        assert second.data == b"POST /v1/run"
        assert [r.target for r in proxy.requests] == [
            f"{origin.url}/v1/jobs/1?x=1",
            f"{origin.url}/v1/run",
        ]
        expected = "Basic " + base64.b64encode(b"user:p@ss").decode()
        assert all(r.headers["proxy-authorization"] == expected for r in proxy.requests)
        assert proxy.accepted == 1  # keep-alive to the proxy
        assert all("proxy-authorization" not in r.headers for r in origin.requests)
        assert origin.requests[0].headers["x-api-key"] == "k"
        assert p.proxy == f"http://127.0.0.1:{proxy.port}"  # credentials never shown
        assert "p@ss" not in repr(p)
        assert "p%40ss" not in repr(p)


def test_a_proxy_without_credentials_gets_no_proxy_authorization() -> None:
    with serving() as origin, ForwardProxy() as proxy:
        p = HttpPool(2.0, 2.0, proxy=f"127.0.0.1:{proxy.port}")  # scheme-less, as in env vars

        assert p.urlopen("GET", f"{origin.url}/x").status == 200
        p.clear()

        assert "proxy-authorization" not in proxy.requests[0].headers


def test_a_proxy_url_that_is_not_http_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="http://"):
        HttpPool(1.0, 1.0, proxy="socks5://127.0.0.1:1080")


def test_the_client_uses_the_environments_proxy_read_once_and_honours_no_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    key = "proxy-test-key-0123"
    with FakeHatz(api_key=key) as fake, ForwardProxy() as proxy:
        seed_default_apps(fake)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        proxied = HatzClient(api_key=key, base_url=fake.url, retries=0)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = HatzClient(api_key=key, base_url=fake.url, retries=0)
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # later changes are not seen

        with proxied, direct:
            assert proxied.get_app(CODING_APP_ID).id == CODING_APP_ID
            assert direct.get_app(CODING_APP_ID).id == CODING_APP_ID

        assert [r.target for r in proxy.requests] == [f"{fake.url}/app/{CODING_APP_ID}"]
        assert proxy.requests[0].headers["x-api-key"] == key


# --- HTTPS -----------------------------------------------------------------------------------


@dataclass
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def _make_certificate(directory: Path, name: str, san: str) -> Certificate:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "2"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert)),
            *("-subj", f"/CN={name}", "-addext", f"subjectAltName={san}"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return Certificate(cert, key)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Certificate]:
    """Self-signed certificates: one for 127.0.0.1, one for another name only."""
    if shutil.which("openssl") is None:
        pytest.skip(
            "HTTPS tests need the openssl command line tool: "
            "apt-get install openssl (Debian/Ubuntu), apk add openssl, or brew install openssl"
        )
    directory = tmp_path_factory.mktemp("tls")
    return {
        "loopback": _make_certificate(directory, "loopback", "IP:127.0.0.1"),
        "elsewhere": _make_certificate(directory, "elsewhere", "DNS:elsewhere.test"),
    }


def test_https_with_the_ca_bundle_succeeds_over_one_connection(
    certificates: dict[str, Certificate],
) -> None:
    cert = certificates["loopback"]
    p = HttpPool(2.0, 2.0, ca_bundle=str(cert.cert))

    with serving(tls=cert.server_context()) as server:
        answers = [p.urlopen("GET", f"{server.url}/secure/{i}") for i in range(3)]
        p.clear()

        assert [a.data for a in answers] == [f"GET /secure/{i}".encode() for i in range(3)]
        assert server.accepted == 1


def test_https_with_an_unknown_certificate_is_connect_failed(
    certificates: dict[str, Certificate],
) -> None:
    p = HttpPool(2.0, 2.0)  # certifi's bundle: the test certificate is not in it

    with serving(tls=certificates["loopback"].server_context()) as server:
        with pytest.raises(ConnectFailed) as info:
            p.urlopen("POST", f"{server.url}/v1/run", body=b"{}")

        assert isinstance(info.value.cause, ssl.SSLCertVerificationError)
        assert server.requests == []


def test_https_checks_the_host_name(certificates: dict[str, Certificate]) -> None:
    cert = certificates["elsewhere"]  # trusted, but for another name
    p = HttpPool(2.0, 2.0, ca_bundle=str(cert.cert))

    with serving(tls=cert.server_context()) as server, pytest.raises(ConnectFailed) as info:
        p.urlopen("GET", f"{server.url}/x")

    assert isinstance(info.value.cause, ssl.SSLCertVerificationError)
    assert "match" in str(info.value.cause)


def test_https_through_a_proxy_is_tunnelled_and_verified_end_to_end(
    certificates: dict[str, Certificate],
) -> None:
    cert = certificates["loopback"]
    with (
        serving(tls=cert.server_context()) as origin,
        ForwardProxy(credentials="u:pw") as proxy,
    ):
        p = HttpPool(
            2.0, 2.0, proxy=f"http://u:pw@127.0.0.1:{proxy.port}", ca_bundle=str(cert.cert)
        )

        answers = [p.urlopen("GET", f"{origin.url}/tunnelled/{i}") for i in range(2)]
        p.clear()

        assert [a.data for a in answers] == [b"GET /tunnelled/0", b"GET /tunnelled/1"]
        (connect,) = proxy.requests  # one tunnel, kept alive
        assert (connect.method, connect.target) == ("CONNECT", f"127.0.0.1:{origin.port}")
        assert (
            connect.headers["proxy-authorization"] == "Basic " + base64.b64encode(b"u:pw").decode()
        )
        assert [r.target for r in origin.requests] == ["/tunnelled/0", "/tunnelled/1"]


def test_a_proxy_refusing_the_tunnel_is_connect_failed(
    certificates: dict[str, Certificate],
) -> None:
    cert = certificates["loopback"]
    with serving(tls=cert.server_context()) as origin, ForwardProxy(credentials="u:pw") as proxy:
        p = HttpPool(2.0, 2.0, proxy=f"http://127.0.0.1:{proxy.port}", ca_bundle=str(cert.cert))

        with pytest.raises(ConnectFailed, match="proxy") as info:
            p.urlopen("POST", f"{origin.url}/v1/run", body=b"{}")

        assert "407" in str(info.value.cause)
        assert origin.accepted == 0


def test_the_client_reads_the_ca_bundle_from_the_environment(
    certificates: dict[str, Certificate], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    cert = certificates["loopback"]
    job = b'{"job_id": "j1", "status": "running", "step_outputs": []}'

    def answer_a_job(conn: Conn) -> None:
        while conn.read_request() is not None:
            conn.respond(200, job, {"Content-Type": "application/json"})

    with serving(answer_a_job, tls=cert.server_context()) as server:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert.cert))
        with HatzClient(api_key="k" * 20, base_url=f"{server.url}/v1", retries=0) as client:
            assert client.get_job("j1").status == "running"

        assert [r.target for r in server.requests] == ["/v1/workflows/j1"]


def test_a_response_made_up_in_code_has_case_insensitive_headers() -> None:
    response = Response.build(429, b"{}", {"Retry-After": "2"})

    assert response.headers.get("retry-after") == "2"
    assert (response.status, response.data, response.reason) == (429, b"{}", "")
