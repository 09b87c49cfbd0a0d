"""Archive throughput: ``python -m bench.archive [--mb N] [--rounds R] [--s3]``.

The archive copy (:func:`worker.files.archive.copy_document`: a streamed GET
through the Hatz client, sha256 and size on the way, written through fsspec)
beside a plain copy of the same bytes in the same run: one urllib3 GET streamed
straight into a local file (``shutil.copyfileobj``), no hashing, no fsspec. Both
read the same document from a local HTTP server standing in for the presigned
URL, on loopback. With ``--s3`` the same two go to moto's S3 server (a real
process on loopback): the archive copy through s3fs, the plain copy as one
``put_object`` of the bytes held in memory.

It also reports the archive copy's peak Python allocation (tracemalloc) next to
the document's size: the copy streams, so the peak stays a few chunks whatever
the size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import urllib3

from worker.files.archive import copy_document
from worker.hatz.client import HatzClient
from worker.local.stack import free_port, wait_until

_CHUNK = 256 * 1024


class _Document(BaseHTTPRequestHandler):
    body: bytes = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("Content-Disposition", 'attachment; filename="report.bin"')
        self.end_headers()
        view = memoryview(self.body)
        for i in range(0, len(view), _CHUNK):
            self.wfile.write(view[i : i + _CHUNK])

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def _document_server(size: int) -> Iterator[str]:
    handler = type("Handler", (_Document,), {"body": os.urandom(size)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/documents/report.bin?X-Amz-Expires=60"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _moto() -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers() -> bool:
        try:
            return urllib3.request("GET", url + "/", timeout=1.0, retries=False).status < 500
        except urllib3.exceptions.HTTPError:
            return False

    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": url,
    }
    saved = {k: os.environ.get(k) for k in env}
    try:
        wait_until(answers, timeout=30, interval=0.1, message="moto's S3 server")
        os.environ.update(env)
        yield url
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        process.terminate()
        process.wait(timeout=10)


def _plain_to_file(url: str, folder: Path, i: int) -> None:
    response = urllib3.request("GET", url, preload_content=False, timeout=30.0)
    with (folder / f"plain-{i}.bin").open("wb") as out:
        shutil.copyfileobj(response, out, _CHUNK)
    response.release_conn()


def _plain_to_s3(url: str, bucket: str, i: int) -> None:
    import s3fs

    data = urllib3.request("GET", url, timeout=30.0).data
    s3fs.S3FileSystem().pipe_file(f"{bucket}/plain/{i}.bin", data)


def _timed(step: Callable[[int], object], rounds: int) -> list[float]:
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - started)
    return times


def _row(name: str, size: int, times: list[float]) -> str:
    mbs = [size / 1e6 / t for t in times]
    return f"{name:<34} {statistics.median(mbs):>9.1f} {min(mbs):>9.1f} {max(mbs):>9.1f}"


def _peak(client: HatzClient, url: str, root: str) -> int:
    tracemalloc.start()
    try:
        copy_document(client, url, root, "peak", "step")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run(size_mb: int, rounds: int, s3: bool) -> list[str]:
    """Measure; return the table's lines."""
    size = size_mb * 1024 * 1024
    lines = [
        f"archive throughput, {size_mb} MiB document, {rounds} rounds, MB/s",
        f"{'copy':<34} {'median':>9} {'min':>9} {'max':>9}",
    ]
    with (
        _document_server(size) as url,
        tempfile.TemporaryDirectory(prefix="hatz-bench-archive-") as tmp,
        HatzClient(api_key="bench", base_url="http://127.0.0.1:9/v1") as client,
    ):
        folder = Path(tmp)
        root = folder.as_uri() + "/archive/"
        _plain_to_file(url, folder, -1)  # warm both paths once
        copy_document(client, url, root, "warm", "step")
        plain = _timed(lambda i: _plain_to_file(url, folder, i), rounds)
        archive = _timed(lambda i: copy_document(client, url, root, f"r{i}", "step"), rounds)
        lines.append(_row("plain copy -> local file", size, plain))
        lines.append(_row("archive copy -> file:// (sha256)", size, archive))
        if s3:
            with _moto():
                import s3fs

                s3fs.S3FileSystem().mkdir("bench-archive")
                s3_root = "s3://bench-archive/hatz/"
                plain_s3 = _timed(lambda i: _plain_to_s3(url, "bench-archive", i), rounds)
                archive_s3 = _timed(
                    lambda i: copy_document(client, url, s3_root, f"r{i}", "step"), rounds
                )
            lines.append(_row("plain put_object -> s3 (moto)", size, plain_s3))
            lines.append(_row("archive copy -> s3:// (moto)", size, archive_s3))
        peak = _peak(client, url, root)
        lines.append(
            f"archive copy peak Python allocation: {peak / 1e6:.1f} MB "
            f"for a {size / 1e6:.1f} MB document"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.archive", description=__doc__)
    parser.add_argument("--mb", type=int, default=64, help="document size, MiB (default 64)")
    parser.add_argument("--rounds", type=int, default=5, help="copies of each kind (default 5)")
    parser.add_argument("--s3", action="store_true", help="also copy into moto's S3 server")
    args = parser.parse_args(argv)
    for line in run(args.mb, args.rounds, args.s3):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
