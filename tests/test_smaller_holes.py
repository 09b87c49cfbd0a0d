"""Smaller holes: the metrics endpoint, CSV formula injection, callback URLs that can
never be delivered, stale presigned URLs in downloads, signatures in errors, and
user errors that used to end in a traceback."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from tests.conftest import make_settings
from tests.test_batch_results import DOCUMENT, _document_server
from tests.test_batches_unit import Harness, harness, make_batch
from worker.api.runs import enqueue_run
from worker.batches.create import create_batch
from worker.batches.records import row_run_ids
from worker.batches.request import BatchRequest
from worker.batches.results import write_results
from worker.context import Context
from worker.errors import InvalidBatchError, InvalidRunError
from worker.hatz.types import PresignedURL
from worker.local.stack import free_port
from worker.ops.metrics import HatzCollector
from worker.store.keys import Keys
from worker.store.ledger import RunState

__all__ = ["harness"]

ROOT = Path(__file__).resolve().parent.parent


# --- metrics --------------------------------------------------------------------------------


def _value(collector: HatzCollector, name: str) -> float:
    for family in collector.collect():
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exported")


def test_a_scrape_is_cached_for_a_few_seconds(fake_redis: fakeredis.FakeRedis) -> None:
    # Given an exporter and one parked poll
    now = [1000.0]
    keys = Keys()
    collector = HatzCollector(fake_redis, keys, clock=lambda: now[0])
    fake_redis.zadd(keys.parked, {"run-1": 1.0})
    assert _value(collector, "hatz_polls_parked") == 1

    # When Redis changes and the exporter is scraped again at once, then later
    fake_redis.zadd(keys.parked, {"run-2": 2.0})
    soon = _value(collector, "hatz_polls_parked")
    now[0] += 10
    later = _value(collector, "hatz_polls_parked")

    # Then the quick second scrape was served from the first reading, the late one afresh
    assert (soon, later) == (1, 2)


def test_the_metrics_server_binds_loopback_by_default() -> None:
    from worker.ops.metrics import start_metrics_server

    port = free_port()
    server, _thread = start_metrics_server(fakeredis.FakeRedis(), Keys(), port=port)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()


def _cli(args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(cwd),
        env={**os.environ, "HATZ_REDIS_URL": "redis://127.0.0.1:9/0", **(env or {})},
        check=False,
    )


def test_metrics_server_help_says_loopback_and_a_taken_port_is_one_line() -> None:
    assert "default 127.0.0.1" in _cli(["metrics-server", "--help"]).stdout

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _cli(["metrics-server", "--port", str(port)])

    assert done.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_fake_hatz_on_a_taken_port_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _cli(["fake-hatz", "--port", str(port)])

    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


# --- callback URLs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/a b",
        "http://hooks.example.com/a\tb",
        "http://hooks.example.com:0/h",
    ],
)
def test_a_callback_url_that_can_never_be_delivered_is_refused_at_enqueue(
    context_factory: Callable[..., Context], url: str
) -> None:
    ctx = context_factory(make_settings(callback_allow_private=False))

    with pytest.raises(InvalidRunError, match="callback_url"):
        enqueue_run("app", {}, callback_url=url, context=ctx, celery=None)

    assert ctx.redis.zcard(ctx.keys.runs) == 0


def test_a_batch_callback_url_with_port_0_is_refused_at_creation(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    ctx, _, _ = harness()
    source = tmp_path / "rows.csv"
    source.write_text("topic\nx\n")

    with pytest.raises(InvalidBatchError, match="port 0"):
        create_batch(ctx, BatchRequest("app", source, callback_url="http://example.com:0/h"))


# --- results ------------------------------------------------------------------------------


def test_results_csv_escapes_cells_a_spreadsheet_would_run(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    # Given rows whose run errors start like spreadsheet formulas
    ctx, _, _ = harness()
    batch_id, _ = make_batch(ctx, tmp_path, rows=5, limit=5)
    errors = ['=HYPERLINK("http://evil.example/")', "+1", "-2", "@SUM(A1)", "plain"]
    for run_id, error in zip(row_run_ids(ctx, batch_id), errors, strict=True):
        assert ctx.ledger.cas(run_id, states=None, to=RunState.FAILED, fields={"error": error})
    out = tmp_path / "results.csv"

    write_results(ctx, batch_id, out)

    with out.open(newline="") as handle:
        cells = [row["error"] for row in csv.DictReader(handle)]
    assert cells == ["'" + e for e in errors[:4]] + ["plain"]


class _Renewing:
    """The Hatz client's presigned-url call, handing out a fresh link."""

    def __init__(self, fresh: str) -> None:
        self.fresh = fresh
        self.renewed: list[tuple[str, str]] = []

    def presigned_url(self, job_id: str, step_id: str, *, expires_in: int = 3600) -> PresignedURL:
        self.renewed.append((job_id, step_id))
        return PresignedURL(url=self.fresh, expires_in=expires_in)


def test_download_renews_expired_presigned_urls_first(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    # Given a completed run whose presigned URL has expired (its link now answers 404)
    ctx, client, clock = harness()
    batch_id, _ = make_batch(ctx, tmp_path, rows=1, limit=1)
    (run_id,) = row_run_ids(ctx, batch_id)
    with _document_server() as base:
        renewing = _Renewing(f"{base}/doc.pdf?X-Amz-Signature=fresh")
        client.presigned_url = renewing.presigned_url  # type: ignore[attr-defined]
        documents = {"s1": {"url": f"{base}/expired.pdf?sig=old", "expires_at": clock.now - 1}}
        fields = {"documents": documents, "job_id": "job-9"}
        assert ctx.ledger.cas(run_id, states=None, to=RunState.COMPLETED, fields=fields)

        # When the results are written with downloads
        write_results(ctx, batch_id, tmp_path / "out.jsonl", download=str(tmp_path / "docs"))

    # Then the link was renewed first and the document fetched from the new one
    assert renewing.renewed == [("job-9", "s1")]
    (row,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert Path(row["files"]["s1"]).read_bytes() == DOCUMENT


def test_a_failed_download_names_the_url_without_its_signature(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    ctx, _, _ = harness()
    batch_id, _ = make_batch(ctx, tmp_path, rows=1, limit=1)
    (run_id,) = row_run_ids(ctx, batch_id)
    dead = f"http://127.0.0.1:{free_port()}/doc.pdf?X-Amz-Signature=s3cr3tsig"
    documents = {"s1": {"url": dead, "expires_at": 0}}
    assert ctx.ledger.cas(
        run_id, states=None, to=RunState.COMPLETED, fields={"documents": documents}
    )

    with pytest.raises(InvalidBatchError) as info:
        write_results(ctx, batch_id, tmp_path / "out.csv", download=str(tmp_path / "docs"))

    text = str(info.value) + repr(info.value.__cause__) + repr(info.value.__context__)
    assert "cannot download http://127.0.0.1" in text
    assert "s3cr3tsig" not in text


# --- no traceback -----------------------------------------------------------------------------


def test_a_bad_out_path_is_refused_before_anything_is_downloaded(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    ctx, _, _ = harness()
    batch_id, _ = make_batch(ctx, tmp_path, rows=1, limit=1)

    with pytest.raises(InvalidBatchError, match="cannot write it"):
        write_results(ctx, batch_id, tmp_path / "no" / "such" / "dir" / "out.csv")
    existing = tmp_path / "kept.csv"
    existing.write_text("earlier results\n")
    with pytest.raises(InvalidBatchError, match="cannot make the folder"):
        write_results(ctx, batch_id, existing, download=str(existing / "docs"))
    assert existing.read_text() == "earlier results\n"  # a failed export keeps the old file


@pytest.mark.parametrize("proxy", ["socks5://user:pw@127.0.0.1:1080", "https://127.0.0.1:3128"])
def test_an_unsupported_proxy_url_is_one_line_naming_the_variable(
    proxy: str, tmp_path: Path
) -> None:
    env = {"HTTPS_PROXY": proxy, "HATZ_API_KEY": "k", "HATZ_BASE_URL": "https://hatz.invalid/v1"}

    done = _cli(["apps"], env=env, cwd=tmp_path)

    assert done.returncode == 2
    assert "HTTPS_PROXY" in done.stderr
    assert "is not supported" in done.stderr
    assert "Traceback" not in done.stderr
    assert "pw" not in done.stderr


def test_log_redaction_masks_a_signature_in_urllib3_error_texts() -> None:
    from worker.ops.redaction import Redactor

    text = (
        "MaxRetryError: HTTPSConnectionPool(host='bucket.example', port=443): Max retries "
        "exceeded with url: /doc.pdf?X-Amz-Credential=AK&X-Amz-Signature=abcdef0123 "
        "(Caused by ...); again: doc.pdf?Signature=zz99&Expires=1"
    )

    redacted = Redactor()(text)

    assert "abcdef0123" not in redacted
    assert "zz99" not in redacted
    assert "AK&" not in redacted
    assert "url: /doc.pdf?[REDACTED]" in redacted
