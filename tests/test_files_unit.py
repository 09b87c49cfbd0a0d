"""File inputs and the archive, one part at a time: what a file input names, the https
source behind the SSRF guard (a real HTTPS server on loopback with a test CA), the
Hatz client streaming any source, and the archive copy against the fake Hatz server."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import Settings
from tests.conftest import make_settings
from tests.file_servers import HttpsFiles
from worker.batches.sources import read_source
from worker.errors import ArchiveError, FileSourceError
from worker.fake_hatz import REPORT_SUMMARIZER_ID, FakeHatz, ManualClock, seed_default_apps
from worker.files.archive import archive_key, copy_document, read_archived
from worker.files.https import HttpsSource
from worker.files.refs import RefKind, check_url_form, kind_of
from worker.files.sources import check_urls, upload_input
from worker.hatz.client import HatzClient
from worker.runs.request import check_request

KEY = "hatz-test-key-files"
BODY = os.urandom(300_000)


@pytest.fixture(scope="module")
def https() -> Iterator[HttpsFiles]:
    with HttpsFiles() as server:
        yield server


def _settings(https: HttpsFiles, **overrides: object) -> Settings:
    return make_settings(
        file_url_allow_hosts="127.0.0.1",
        file_url_ca_bundle=https.ca_bundle,
        **overrides,
    )


def _read(source: HttpsSource) -> bytes:
    with source:
        return b"".join(source.chunks())


# --- what a file input names --------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "kind"),
    [
        ("/data/report.csv", RefKind.LOCAL),
        ("report.csv", RefKind.LOCAL),
        ("https://files.example.com/r.csv", RefKind.HTTPS),
        ("s3://bucket/key.csv", RefKind.STORE),
        ("gs://bucket/key.csv", RefKind.STORE),
        ("az://container/key.csv", RefKind.STORE),
    ],
)
def test_a_file_input_is_a_path_an_https_url_or_a_store_url(ref: str, kind: RefKind) -> None:
    assert kind_of(ref) is kind


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("http://files.example.com/r.csv", "must use https://"),
        ("file:///etc/passwd", "unsupported scheme 'file'"),
        ("ftp://files.example.com/r.csv", "unsupported scheme 'ftp'"),
        ("nosuchstore://bucket/key", "unsupported scheme 'nosuchstore'"),
        ("s3://bucket-only", "must name a bucket and an object"),
        ("https:///no-host", "has no host"),
    ],
)
def test_a_url_file_input_of_the_wrong_form_is_refused_at_enqueue(ref: str, problem: str) -> None:
    (found,) = check_url_form("doc", ref)

    assert problem in found
    assert "'doc'" in found


def test_check_request_keeps_url_inputs_as_they_are_and_checks_only_their_form() -> None:
    checked = check_request(
        "app",
        {},
        {"a": "s3://bucket/in/a.csv", "b": "https://x.example/b.pdf"},
        None,
        None,
        settings=make_settings(),
    )
    files, problems = checked.files, checked.problems

    assert problems == []
    assert files == {"a": "s3://bucket/in/a.csv", "b": "https://x.example/b.pdf"}


def test_an_https_input_at_a_private_address_is_refused_at_enqueue() -> None:
    settings = make_settings(file_url_allow_private=False)

    (problem,) = check_urls({"doc": "https://10.1.2.3/report.pdf"}, settings)

    assert problem.startswith("file URL for input 'doc' refused: address 10.1.2.3, a private")
    assert "HATZ_FILE_URL_ALLOW_HOSTS" in problem


def test_callback_allowances_do_not_open_file_urls() -> None:
    settings = make_settings(callback_allow_private=True, file_url_allow_private=False)

    assert check_urls({"doc": "https://127.0.0.1/r.csv"}, settings)


# --- the https source ---------------------------------------------------------------------


def test_an_https_input_is_streamed_with_its_announced_size(https: HttpsFiles) -> None:
    url = https.serve("/plain.bin", BODY)

    source = HttpsSource(url, _settings(https))

    assert source.size == len(BODY)
    assert source.name == "plain.bin"
    assert _read(source) == BODY


def test_an_answer_without_a_length_is_spooled_then_streamed(https: HttpsFiles) -> None:
    url = https.serve("/chunked.bin", BODY, kind="chunked")

    source = HttpsSource(url, _settings(https))

    with source:
        first = b"".join(source.chunks())
        again = b"".join(source.chunks())  # a retried upload reads the spooled copy again

    assert source.size == len(BODY)
    assert first == again == BODY
    assert https.requests.count("/chunked.bin") == 1


def test_a_retry_fetches_the_url_again(https: HttpsFiles) -> None:
    url = https.serve("/again.bin", BODY)
    source = HttpsSource(url, _settings(https))

    with source:
        first = b"".join(source.chunks())
        second = b"".join(source.chunks())

    assert first == second == BODY
    assert https.requests.count("/again.bin") == 2


def test_a_file_over_the_size_cap_is_refused_before_its_body_is_read(https: HttpsFiles) -> None:
    url = https.serve("/big.bin", BODY)

    with pytest.raises(FileSourceError, match="HATZ_FILE_MAX_BYTES") as caught:
        HttpsSource(url, _settings(https, file_max_bytes=1000))

    assert not caught.value.transient


def test_an_unannounced_file_over_the_size_cap_stops_while_spooling(https: HttpsFiles) -> None:
    url = https.serve("/big-chunked.bin", BODY, kind="chunked")

    with pytest.raises(FileSourceError, match="larger than HATZ_FILE_MAX_BYTES"):
        HttpsSource(url, _settings(https, file_max_bytes=10_000))


def test_a_redirect_is_not_followed(https: HttpsFiles) -> None:
    https.serve("/target.bin", BODY)
    url = https.serve("/moved.bin", kind="redirect", to=https.url("/target.bin"))

    with pytest.raises(FileSourceError, match="answered 302 \\(redirects are not followed\\)"):
        HttpsSource(url, _settings(https))

    assert "/target.bin" not in https.requests


def test_a_name_resolving_to_a_private_address_is_refused_before_connecting(
    https: HttpsFiles,
) -> None:
    https.serve("/secret.bin", BODY)
    url = f"https://files.example.com:{https.port}/secret.bin"

    with pytest.raises(
        FileSourceError, match=re.escape("resolves to 127.0.0.1, a loopback address")
    ):
        HttpsSource(
            url,
            make_settings(file_url_ca_bundle=https.ca_bundle),
            resolver=lambda host, port: ["127.0.0.1"],
        )

    assert "/secret.bin" not in https.requests


def test_a_server_that_trickles_is_cut_at_the_total_deadline(https: HttpsFiles) -> None:
    url = https.serve("/slow.bin", b"x" * 1000, kind="trickle")
    source = HttpsSource(url, _settings(https, file_fetch_timeout=1.0))

    with source, pytest.raises(FileSourceError, match="timeout") as caught:
        b"".join(source.chunks())

    assert caught.value.transient


def test_an_untrusted_certificate_is_refused(https: HttpsFiles) -> None:
    url = https.serve("/tls.bin", BODY)

    with pytest.raises(FileSourceError, match="tls"):
        HttpsSource(url, make_settings(file_url_allow_hosts="127.0.0.1"))


# --- through the Hatz client and the fake Hatz server -------------------------------------


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1_800_000_000.0)


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[FakeHatz]:
    with FakeHatz(api_key=KEY, clock=clock) as server:
        seed_default_apps(server)
        yield server


@pytest.fixture
def client(fake: FakeHatz) -> Iterator[HatzClient]:
    with HatzClient(api_key=KEY, base_url=fake.url, retries=0) as c:
        yield c


def test_an_https_input_reaches_the_upload_byte_for_byte(
    https: HttpsFiles, fake: FakeHatz, client: HatzClient
) -> None:
    url = https.serve("/report.csv", BODY)

    uploaded = upload_input(client, url, _settings(https), scope_id=REPORT_SUMMARIZER_ID)

    info = fake.upload_info(uploaded.file_uuid)
    assert info is not None
    assert (info["size"], info["sha256"]) == (len(BODY), hashlib.sha256(BODY).hexdigest())
    assert info["filename"] == "report.csv"


class _ShortSource:
    name = "short.bin"
    size = 100

    def chunks(self) -> Iterator[bytes]:
        yield b"x" * 60


def test_a_source_shorter_than_announced_stops_the_upload(client: HatzClient) -> None:
    with pytest.raises(FileSourceError, match="read 60 bytes where 100 were announced"):
        client.upload_source(_ShortSource(), scope_id="app")


def _document_url(client: HatzClient, clock: ManualClock, tmp_path: Path) -> tuple[str, str]:
    report = tmp_path / "report.csv"
    report.write_text("a,b\n1,2\n")
    uploaded = client.upload_file(report, scope_id=REPORT_SUMMARIZER_ID)
    job = client.run_workflow(
        REPORT_SUMMARIZER_ID, {"report_file": uploaded.file_uuid, "summary_style": "brief"}
    )
    clock.advance(60)
    done = client.get_job(job.job_id)
    (step,) = [s for s in done.step_outputs if s.output_type != "dump"]
    return client.presigned_url(job.job_id, step.step_id, expires_in=60).url, step.step_id


def test_a_file_archive_keeps_the_document_after_its_url_expired(
    client: HatzClient, clock: ManualClock, tmp_path: Path
) -> None:
    url, step_id = _document_url(client, clock, tmp_path)
    with client.open_document(url) as document:
        served = b"".join(document.chunks)
        document_name = document.filename
    root = (tmp_path / "archive").as_uri() + "/"

    archived = copy_document(client, url, root, "run-1", step_id)
    clock.advance(120)  # the presigned URL has expired

    assert archived["url"] == root + archive_key("run-1", step_id, document_name)
    assert document_name.endswith(".pdf")
    assert archived["size"] == len(served)
    assert archived["sha256"] == hashlib.sha256(served).hexdigest()
    assert read_archived(archived["url"]) == served
    assert not list((tmp_path / "archive").rglob("*.partial"))
    with pytest.raises(ArchiveError, match="403"):
        copy_document(client, url, root, "run-1", step_id)


def test_archive_keys_are_run_step_and_a_safe_file_name() -> None:
    assert archive_key("r-1", "s-2", "Q3 report.pdf") == "r-1/s-2/Q3_report.pdf"
    assert archive_key("r-1", "s-2", "../../etc/passwd") == "r-1/s-2/etc_passwd"
    assert archive_key("r-1", "s-2", "..") == "r-1/s-2/document"


def test_a_batch_row_may_name_its_file_by_url(tmp_path: Path) -> None:
    source = tmp_path / "rows.csv"
    source.write_text("topic,doc\ntides,s3://bucket/in/tides.pdf\nmoons,https://x.example/m.pdf\n")

    rows, bad = read_source(source, file_input="doc")

    assert bad == []
    assert [r.files for r in rows] == [
        {"doc": "s3://bucket/in/tides.pdf"},
        {"doc": "https://x.example/m.pdf"},
    ]
