"""Batch results: the export file, and documents downloaded over HTTP (loopback only)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import urllib3

from tests.test_batches_unit import Harness, harness, make_batch
from worker.batches.records import row_run_ids
from worker.batches.results import write_results
from worker.context import Context
from worker.store.ledger import RunState

__all__ = ["harness"]  # the fixture, shared with the batch unit tests

DOCUMENT = b"%PDF-1.4 a report\n%%EOF"


class _Documents(http.server.BaseHTTPRequestHandler):
    """``/doc.pdf`` is the document; any other path is a 404."""

    def do_GET(self) -> None:
        found = self.path.split("?", 1)[0] == "/doc.pdf"
        body = DOCUMENT if found else b"no such document"
        self.send_response(200 if found else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output clean


@contextmanager
def _document_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Documents)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _completed_with_document(ctx: Context, run_id: str, url: str) -> None:
    documents = {"step-1": {"url": url, "expires_at": 0}}
    assert ctx.ledger.cas(
        run_id, states=None, to=RunState.COMPLETED, fields={"documents": documents}
    )


def test_results_download_every_document_next_to_the_export(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    # Given a batch whose one run completed with a document at a presigned-style URL
    ctx, _, _ = harness()
    batch_id, _ = make_batch(ctx, tmp_path, rows=1, limit=1)
    (run_id,) = row_run_ids(ctx, batch_id)
    out = tmp_path / "results.jsonl"
    with _document_server() as base:
        _completed_with_document(ctx, run_id, f"{base}/doc.pdf?X-Amz-Signature=abc")

        # When the results are written with downloads
        written = write_results(ctx, batch_id, out, download=str(tmp_path / "docs"))

    # Then the row names the downloaded file, which holds the document
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == 1
    assert row["files"]["step-1"].endswith("row00002-step-1.pdf")  # the CSV header is row 1
    assert Path(row["files"]["step-1"]).read_bytes() == DOCUMENT


def test_a_document_that_cannot_be_fetched_stops_the_export(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    # Given a completed run whose document URL answers 404
    ctx, _, _ = harness()
    batch_id, _ = make_batch(ctx, tmp_path, rows=1, limit=1)
    (run_id,) = row_run_ids(ctx, batch_id)
    out = tmp_path / "results.jsonl"
    with _document_server() as base:
        _completed_with_document(ctx, run_id, f"{base}/gone.pdf?X-Amz-Signature=abc")

        # When the results are written with downloads, then the error names the status
        with pytest.raises(urllib3.exceptions.HTTPError, match="HTTP 404"):
            write_results(ctx, batch_id, out, download=str(tmp_path / "docs"))
    assert not out.exists()
