"""File inputs from object storage and https, and the output archive, end to end.

A private redis-server, a real `celery worker` subprocess, the fake Hatz server
over HTTP, moto's S3 API in server mode (a real process on loopback, which
s3fs reaches through the standard ``AWS_ENDPOINT_URL``) and an HTTPS file
server with a test CA. What Hatz received comes from the fake's own record of
each upload (size and sha256), not from our ledger.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from tests.file_servers import HttpsFiles, MotoS3, wait_for_expiry
from tests.http_stack import running_api
from tests.stack import Stack, running_stack
from worker.errors import InvalidRunError
from worker.fake_hatz import FakeApp, FakeInput, FakeStep
from worker.files.archive import read_archived
from worker.local.stack import wait_until
from worker.store.ledger import RunState

pytestmark = pytest.mark.integration

INPUTS = "hatz-inputs"
ARCHIVE = "hatz-archive"
POLL = 0.2


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    with MotoS3() as server:
        fs = server.filesystem()
        fs.mkdir(INPUTS)
        fs.mkdir(ARCHIVE)
        yield server


@pytest.fixture(scope="module")
def https() -> Iterator[HttpsFiles]:
    with HttpsFiles() as server:
        yield server


@pytest.fixture(scope="module")
def stack(s3: MotoS3, https: HttpsFiles) -> Iterator[Stack]:
    values: dict[str, Any] = {
        "poll_initial_delay": POLL,
        "poll_interval": POLL,
        "poll_max_interval": 0.5,
        "poll_backoff": 1.0,
        "http_read_timeout": 5.0,
        "http_retries": 1,
        "http_retry_base_delay": 0.05,
        "http_retry_max_delay": 0.2,
        "app_cache_ttl": 0,
        "callback_allow_private": True,
        "callback_retry_delays": "0,0.2,0.5",
        "file_url_allow_hosts": "127.0.0.1",
        "file_url_ca_bundle": https.ca_bundle,
        "archive_url": f"s3://{ARCHIVE}/hatz/",
        "archive_retry_delays": "0.2,0.2",
        "presign_expires_in": 3,
    }
    with running_stack(values=values, app_defaults={"duration": 0.3}) as s:
        yield s


def _file_app(stack: Stack, *, document: bool = False) -> FakeApp:
    steps = [FakeStep(output_type="dump")]
    if document:
        steps.append(FakeStep(output_type="document", filename="summary.txt"))
    return stack.app(
        user_inputs=[FakeInput("report", variable_type="file_upload", required=True)],
        steps=steps,
    )


def _received(stack: Stack, run_id: str) -> dict[str, Any]:
    """What the fake Hatz server kept of the upload behind the run's ``report`` input."""
    file_uuid = stack.context.ledger.require(run_id)["inputs"]["report"]
    info = stack.fake.upload_info(file_uuid)
    assert info is not None, "Hatz never received the file the run was submitted with"
    return info


def _digest(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


def test_an_s3_input_run_completes_and_hatz_received_exactly_its_bytes(
    stack: Stack, s3: MotoS3
) -> None:
    # Given a file in a bucket, larger than one upload chunk
    data = os.urandom(700_000)
    s3.filesystem().pipe_file(f"{INPUTS}/in/report.csv", data)
    app = _file_app(stack)

    # When a run names it by its s3:// URL
    run = stack.wait(stack.enqueue(app.id, files={"report": f"s3://{INPUTS}/in/report.csv"}))

    # Then it completed and the fake Hatz server received exactly those bytes
    assert run.state is RunState.COMPLETED, run.get("error")
    info = _received(stack, run.run_id)
    assert (info["size"], info["sha256"]) == _digest(data)
    assert info["filename"] == "report.csv"


def test_an_https_input_run_completes_and_hatz_received_exactly_its_bytes(
    stack: Stack, https: HttpsFiles
) -> None:
    data = os.urandom(500_000)
    url = https.serve("/exports/report.csv", data)
    app = _file_app(stack)

    run = stack.wait(stack.enqueue(app.id, files={"report": url}))

    assert run.state is RunState.COMPLETED, run.get("error")
    info = _received(stack, run.run_id)
    assert (info["size"], info["sha256"]) == _digest(data)
    assert "/exports/report.csv" in https.requests


def test_an_https_input_at_a_private_address_is_refused_and_nothing_is_enqueued(
    stack: Stack, https: HttpsFiles
) -> None:
    app = _file_app(stack)
    before = len(stack.context.ledger.run_ids(limit=10_000))

    with pytest.raises(InvalidRunError) as refused:
        stack.enqueue(app.id, files={"report": f"https://10.20.30.40:{https.port}/r.csv"})

    (problem,) = refused.value.problems
    assert "file URL for input 'report' refused: address 10.20.30.40, a private" in problem
    assert len(stack.context.ledger.run_ids(limit=10_000)) == before


def test_an_https_input_over_the_http_api_completes_with_exactly_its_bytes(
    stack: Stack, https: HttpsFiles
) -> None:
    data = os.urandom(300_000)
    url = https.serve("/exports/api-report.csv", data)
    app = _file_app(stack)

    with running_api(stack.values) as api:
        token = api.token("files-client")
        made = api.request(
            "POST", "/v1/runs", token=token, json={"app_id": app.id, "files": {"report": url}}
        )
        private = api.request(
            "POST",
            "/v1/runs",
            token=token,
            json={"app_id": app.id, "files": {"report": f"https://10.20.30.40:{https.port}/r"}},
        )
        store = api.request(
            "POST",
            "/v1/runs",
            token=token,
            json={"app_id": app.id, "files": {"report": "s3://b/o"}},
        )

    assert made.status_code == 201, made.text
    run = stack.wait(made.json()["run_id"])
    assert run.state is RunState.COMPLETED, run.get("error")
    assert (_received(stack, run.run_id)["size"], _received(stack, run.run_id)["sha256"]) == (
        _digest(data)
    )
    assert "/exports/api-report.csv" in https.requests
    assert private.status_code == 422
    assert "address 10.20.30.40, a private" in " ".join(private.json()["errors"])
    assert store.status_code == 422
    assert "only https://" in " ".join(store.json()["errors"])


def test_a_missing_object_rejects_the_run_with_a_clear_error(stack: Stack) -> None:
    app = _file_app(stack)

    run = stack.wait(stack.enqueue(app.id, files={"report": f"s3://{INPUTS}/in/missing.csv"}))

    assert run.state is RunState.REJECTED
    assert run["error"] == (
        f"cannot read file for input 'report': s3://{INPUTS}/in/missing.csv: no such object"
    )
    assert not stack.calls("run", app.id)


def test_upload_here_sends_the_file_from_the_caller_and_the_worker_reads_none(
    stack: Stack, s3: MotoS3
) -> None:
    data = os.urandom(200_000)
    s3.filesystem().pipe_file(f"{INPUTS}/in/here.bin", data)
    app = _file_app(stack)

    run_id = stack.enqueue(app.id, files={"report": f"s3://{INPUTS}/in/here.bin"}, upload_here=True)
    recorded = stack.context.ledger.require(run_id)
    run = stack.wait(run_id)

    assert recorded["files"] == {}  # the worker had nothing to read
    assert run.state is RunState.COMPLETED, run.get("error")
    assert (_received(stack, run_id)["size"], _received(stack, run_id)["sha256"]) == _digest(data)


def _callback_document(stack: Stack, run_id: str) -> dict[str, Any]:
    wait_until(lambda: stack.deliveries_for(run_id), timeout=15, message="the callback")
    (delivery,) = stack.deliveries_for(run_id)
    steps = json.loads(delivery["body"])["data"]["step_outputs"]
    (document,) = [s["document"] for s in steps if s.get("document")]
    return dict(document)


def test_the_archive_keeps_the_document_after_its_presigned_url_expired(
    stack: Stack, https: HttpsFiles
) -> None:
    # Given the archive on (s3://hatz-archive/hatz/) and a workflow with a document step
    app = _file_app(stack, document=True)
    url = https.serve("/in/brief.txt", b"quarterly figures\n")

    # When a run completes with a callback
    run_id = stack.enqueue(app.id, files={"report": url}, callback_url=stack.receiver.url)
    run = stack.wait(run_id)
    document = _callback_document(stack, run_id)
    served = urllib3.request("GET", document["url"], timeout=5.0).data

    # Then the callback carries the archived copy beside the presigned URL, and its
    # bytes and sha256 are what the presigned URL served
    assert run.state is RunState.COMPLETED, run.get("error")
    archive = document["archive"]
    (step_id,) = run["documents"]
    assert archive["url"] == f"s3://{ARCHIVE}/hatz/{run_id}/{step_id}/summary.txt"
    assert (archive["size"], archive["sha256"]) == _digest(served)
    assert stack.context.ledger.require(run_id)["archive_state"] == "done"
    assert stack.context.ledger.require(run_id)["documents"][step_id]["archive"] == archive

    # And after the presigned URL expired, the archived copy is still there
    wait_for_expiry(document["url"], timeout=15)
    assert read_archived(archive["url"]) == served


@pytest.fixture
def file_archive(stack: Stack, tmp_path: Path) -> Path:
    """The worker restarted with a ``file://`` archive.

    It stays so (a restart back costs ten seconds): keep the test that uses it last.
    """
    folder = tmp_path / "archive"
    stack.values["archive_url"] = folder.as_uri() + "/"
    stack.restart_worker()
    return folder


# Last in this module: it leaves the worker on a file:// archive (see file_archive).
def test_a_file_archive_works_the_same_way(
    stack: Stack, https: HttpsFiles, file_archive: Path
) -> None:
    app = _file_app(stack, document=True)
    url = https.serve("/in/local.txt", b"figures for a local archive\n")

    run_id = stack.enqueue(app.id, files={"report": url}, callback_url=stack.receiver.url)
    run = stack.wait(run_id)
    document = _callback_document(stack, run_id)
    served = urllib3.request("GET", document["url"], timeout=5.0).data

    assert run.state is RunState.COMPLETED, run.get("error")
    (step_id,) = run["documents"]
    copy = file_archive / run_id / step_id / "summary.txt"
    assert document["archive"]["url"] == copy.as_uri()
    assert (document["archive"]["size"], document["archive"]["sha256"]) == _digest(served)
    wait_for_expiry(document["url"], timeout=15)
    assert copy.read_bytes() == served
