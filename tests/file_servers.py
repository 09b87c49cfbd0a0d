"""Servers on loopback for the file-input and archive tests.

* :class:`MotoS3`: moto's S3 API in server mode, a real process on a free port
  (as ``redis-server`` is for the other integration tests), with the standard
  AWS environment pointing at it (``AWS_ENDPOINT_URL``), so s3fs, in this process
  and in worker subprocesses, talks to it exactly as it would to S3.
* :class:`HttpsFiles`: an HTTPS server with a throwaway CA (trustme) serving
  bytes by path, recording every request it got.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme
import urllib3

from worker.local.stack import free_port, wait_until

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


class MotoS3:
    """``python -m moto.server`` on 127.0.0.1; the AWS environment set while it runs."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._saved: dict[str, str | None] = {}
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__

    def _answers(self) -> bool:
        try:
            status = urllib3.request("GET", self.url + "/", timeout=1.0, retries=False).status
        except urllib3.exceptions.HTTPError:
            return False
        return status < 500

    def __enter__(self) -> MotoS3:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._answers, timeout=30, interval=0.1, message="moto's S3 server")
        except TimeoutError:
            self.__exit__()
            raise
        env = {**AWS_ENV, "AWS_ENDPOINT_URL": self.url}
        for name, value in env.items():
            self._saved[name] = os.environ.get(name)
            os.environ[name] = value
        return self

    def __exit__(self, *exc: object) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()

    def filesystem(self) -> Any:
        """An s3fs file system talking to this server (a fresh instance, no cache)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=AWS_ENV["AWS_ACCESS_KEY_ID"],
            secret=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=self.url,
            skip_instance_cache=True,
        )


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        served = self.server.files.get(self.path.split("?", 1)[0])
        if served is None:
            self.send_error(404)
            return
        kind = served.get("kind", "plain")
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", str(served["to"]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body: bytes = served["body"]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if kind == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 4096):
                part = body[i : i + 4096]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "trickle":  # one byte at a time, slowly: only a deadline ends it
            for i in range(len(body)):
                if self.server.stopping.wait(0.2):
                    return
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, dict[str, Any]]
    requests: list[str]
    stopping: threading.Event

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that refused our certificate or hung up: expected in these tests


class HttpsFiles:
    """An HTTPS server on 127.0.0.1 serving ``files`` (path -> spec) under a test CA.

    A spec is ``{"body": bytes}`` (with a Content-Length), ``{"body": ..., "kind":
    "chunked"}`` (no Content-Length), ``{"body": ..., "kind": "trickle"}`` (a byte
    every 0.2 s) or ``{"kind": "redirect", "to": url}``.
    """

    def __init__(self, files: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self._dir = tempfile.TemporaryDirectory(prefix="hatz-https-")
        self.ca_bundle = os.path.join(self._dir.name, "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_bundle)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.files = {k: dict(v) for k, v in (files or {}).items()}
        self.server.requests = []
        self.server.stopping = threading.Event()
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        """``https://127.0.0.1:PORT<path>``."""
        return f"https://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes = b"", **spec: Any) -> str:
        """Serve ``body`` at ``path``; its URL."""
        self.server.files[path] = {"body": body, **spec}
        return self.url(path)

    @property
    def requests(self) -> list[str]:
        """The paths requested so far."""
        return list(self.server.requests)

    def __enter__(self) -> HttpsFiles:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
        self._dir.cleanup()


def wait_for_expiry(url: str, timeout: float) -> None:
    """Wait until a presigned URL answers 403 (expired)."""

    def expired() -> bool:
        return urllib3.request("GET", url, timeout=5.0, retries=False).status == 403

    wait_until(expired, timeout=timeout, interval=0.2, message="the presigned URL to expire")
