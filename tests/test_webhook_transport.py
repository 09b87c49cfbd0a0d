"""The pinned webhook transport over TLS: connect to the checked address, verify the name."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from worker.webhooks.ssrf import Target
from worker.webhooks.transport import DeliveryError, post

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None,
    reason="needs the openssl command to make a test certificate "
    "(apt-get install openssl / brew install openssl)",
)


class TLSReceiver:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate for ``hooks.test``."""

    def __init__(self, directory: Path) -> None:
        self.cert = directory / "cert.pem"
        key = directory / "key.pem"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-keyout", str(key), "-out", str(self.cert), "-subj", "/CN=hooks.test"),
                *("-addext", "subjectAltName=DNS:hooks.test"),
            ],
            check=True,
            capture_output=True,
        )
        self.server_names: list[str | None] = []
        self.hosts: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.hosts.append(str(self.headers.get("Host")))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)

        def sni(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, ctx: object) -> None:
            self.server_names.append(name)

        context.sni_callback = sni
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[TLSReceiver]:
    receiver = TLSReceiver(tmp_path)
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def test_https_goes_to_the_pinned_address_with_the_url_host_for_sni_and_host(
    tls: TLSReceiver,
) -> None:
    target = Target("https", "hooks.test", tls.port, "/h", "127.0.0.1")

    answer = post(
        target,
        b"{}",
        {"Content-Type": "application/json"},
        connect_timeout=2,
        total_timeout=5,
        ssl_context=tls.client_context(),
    )

    assert answer.status == 204
    assert tls.server_names == ["hooks.test"]
    assert tls.hosts == [f"hooks.test:{tls.port}"]


def test_https_certificate_must_match_the_url_host(tls: TLSReceiver) -> None:
    target = Target("https", "other.test", tls.port, "/h", "127.0.0.1")

    with pytest.raises(DeliveryError) as failed:
        post(
            target,
            b"{}",
            {},
            connect_timeout=2,
            total_timeout=5,
            ssl_context=tls.client_context(),
        )

    assert failed.value.kind == "tls"
    assert tls.hosts == []


def test_https_refuses_an_untrusted_certificate(tls: TLSReceiver) -> None:
    target = Target("https", "hooks.test", tls.port, "/h", "127.0.0.1")

    with pytest.raises(DeliveryError) as failed:
        post(target, b"{}", {}, connect_timeout=2, total_timeout=5)

    assert failed.value.kind == "tls"
