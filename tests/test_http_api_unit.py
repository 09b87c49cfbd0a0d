"""The HTTP API's pieces without a server: client runs and pages in the Python API (on
fakeredis), the run's JSON shape, ``Prefer`` parsing and the multipart receiver."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery

from worker.api.runs import (
    create_run,
    decode_cursor,
    encode_cursor,
    find_idempotent_run,
    get_run,
    page_runs,
)
from worker.context import Context
from worker.errors import IdempotencyConflictError
from worker.http_api.models import RunOut, RunRequest
from worker.http_api.problems import ProblemError
from worker.http_api.runs import _wait_preference
from worker.http_api.uploads import ReceivedFile, receive_multipart


@pytest.fixture
def celery() -> Iterator[Celery]:
    """Publishes to memory."""
    app = Celery("test", broker="memory://")
    yield app
    app.close()


@pytest.fixture
def ctx(context_factory: Callable[..., Context]) -> Context:
    """A context on fakeredis."""
    return context_factory()


class Clock:
    """A settable clock (the ledger stamps runs with it)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_clients_run_records_it_and_is_listed_only_for_it(ctx: Context, celery: Celery) -> None:
    mine, created = create_run("app", client="alice", context=ctx, celery=celery)
    theirs, _ = create_run("app", client="bob", context=ctx, celery=celery)

    assert created is True
    assert get_run(mine, context=ctx)["client"] == "alice"
    assert [r.run_id for r in page_runs(client="alice", context=ctx).runs] == [mine]
    assert {r.run_id for r in page_runs(context=ctx).runs} == {mine, theirs}


def test_idempotency_keys_are_scoped_to_the_client(ctx: Context, celery: Celery) -> None:
    first, _ = create_run("app", idempotency_key="k", client="alice", context=ctx, celery=celery)
    again, created = create_run(
        "app", idempotency_key="k", client="alice", context=ctx, celery=celery
    )
    other, other_created = create_run(
        "app", idempotency_key="k", client="bob", context=ctx, celery=celery
    )

    assert (again, created) == (first, False)
    assert other_created is True
    assert other != first
    assert RunOut.of(get_run(first, context=ctx)).idempotency_key == "k"


def test_a_request_fingerprint_decides_what_the_same_request_is(
    ctx: Context, celery: Celery
) -> None:
    first, _ = create_run(
        "app",
        {"doc": "uuid-1"},
        idempotency_key="k",
        client="alice",
        request_fingerprint="fp-1",
        context=ctx,
        celery=celery,
    )
    # A retry uploads again: another file_uuid, the same request.
    again, created = create_run(
        "app",
        {"doc": "uuid-2"},
        idempotency_key="k",
        client="alice",
        request_fingerprint="fp-1",
        context=ctx,
        celery=celery,
    )

    assert (again, created) == (first, False)
    found = find_idempotent_run("k", request_fingerprint="fp-1", client="alice", context=ctx)
    assert found == first
    assert find_idempotent_run("k", request_fingerprint="fp-1", client="bob", context=ctx) is None
    with pytest.raises(IdempotencyConflictError):
        find_idempotent_run("k", request_fingerprint="fp-2", client="alice", context=ctx)


def test_pages_go_newest_first_without_gaps_or_repeats_even_on_equal_times(
    context_factory: Callable[..., Context], celery: Celery
) -> None:
    clock = Clock()
    ctx = context_factory()
    ctx.ledger.clock = clock
    made = []
    for i in range(7):
        clock.now += 1 if i % 3 == 0 else 0  # runs made at the same instant share a score
        made.append(create_run("app", client="alice", context=ctx, celery=celery)[0])

    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = page_runs(client="alice", limit=2, cursor=cursor, context=ctx)
        seen += [r.run_id for r in page.runs]
        cursor = page.next_cursor
        if cursor is None:
            break

    assert sorted(seen) == sorted(made)
    assert len(seen) == len(set(seen)) == 7
    created = [get_run(r, context=ctx)["created_at"] for r in seen]
    assert created == sorted(created, reverse=True)


def test_a_page_filters_by_state_and_app(ctx: Context, celery: Celery) -> None:
    a, _ = create_run("app-a", client="alice", context=ctx, celery=celery)
    create_run("app-b", client="alice", context=ctx, celery=celery)

    by_app = page_runs(client="alice", app_id="app-a", context=ctx)
    by_state = page_runs(client="alice", state="completed", context=ctx)

    assert [r.run_id for r in by_app.runs] == [a]
    assert by_state.runs == []
    assert by_state.next_cursor is None


@pytest.mark.parametrize(
    "cursor", ["", "%%%", "bm9wZQ", "WzEsMl0", "WyJ4IiwieSJd", "W3RydWUsIngiXQ"]
)
def test_a_foreign_cursor_is_refused(cursor: str) -> None:
    with pytest.raises(ValueError, match="not a valid cursor"):
        decode_cursor(cursor)


def test_a_cursor_round_trips() -> None:
    assert decode_cursor(encode_cursor((1234.5, "abc"))) == (1234.5, "abc")


@pytest.mark.parametrize(
    ("header", "wait"),
    [
        (None, None),
        ("wait=5", 5),
        ("respond-async, wait=10", 10),
        ("WAIT = 3", 3),
        ("wait=600", 60),
        ("wait=-1", None),
        ("wait=soon", None),
        ("return=minimal", None),
    ],
)
def test_prefer_wait_is_read_and_capped(header: str | None, wait: int | None) -> None:
    assert _wait_preference(header) == wait


# --- the multipart receiver ------------------------------------------------------------

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def _body(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _receive(
    body: bytes, directory: Path, cap: int = 10_000, chunk: int = 7
) -> tuple[bytes, dict[str, ReceivedFile]]:
    return asyncio.run(receive_multipart(CONTENT_TYPE, _chunks(body, chunk), directory, cap))


def test_files_stream_to_disk_under_their_names(tmp_path: Path) -> None:
    report = b"region,sales\r\n--not-a-boundary\r\n" * 50

    request, files = _receive(
        _body(("request", None, b'{"app_id": "a"}'), ("report", "../../etc/q 1.csv", report)),
        tmp_path,
    )

    assert request == b'{"app_id": "a"}'
    received = files["report"]
    assert received.path.read_bytes() == report
    assert received.path.name == "q 1.csv"
    assert received.path.is_relative_to(tmp_path)
    assert received.size == len(report)
    assert received.sha256 == hashlib.sha256(report).hexdigest()


def test_a_file_over_the_cap_is_413(tmp_path: Path) -> None:
    with pytest.raises(ProblemError) as info:
        _receive(_body(("request", None, b"{}"), ("f", "f.bin", b"x" * 101)), tmp_path, cap=100)

    assert info.value.status == 413


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_body(("f", "f.bin", b"x")), "no 'request' part"),
        (_body(("request", None, b"{}"), ("note", None, b"hi")), "unexpected multipart field"),
        (_body(("request", None, b"{}"), ("request", None, b"{}")), "appears twice"),
        (_body(("request", None, b"{}"), ("", "f.bin", b"x")), "needs a name"),
        (_body(("request", None, b"{}"), ("f", "f.bin", b"xyz"))[:-30], "ended early"),
        (_body(("request", None, b"{}"))[:-4], "ended early"),
    ],
)
def test_a_malformed_body_is_422(tmp_path: Path, body: bytes, message: str) -> None:
    with pytest.raises(ProblemError, match=message) as info:
        _receive(body, tmp_path)

    assert info.value.status == 422


@pytest.mark.parametrize(
    "body",
    ['{"app_id": "a", "inputs": {"x": NaN}}', '{"app_id": "a", "metadata": {"x": Infinity}}'],
)
def test_a_run_request_is_strict_json(body: str) -> None:
    with pytest.raises(ValueError, match="NaN or Infinity"):
        RunRequest.model_validate_json(body)


def test_a_run_request_refuses_server_paths() -> None:
    with pytest.raises(ValueError, match="never accepted over HTTP"):
        RunRequest.model_validate({"app_id": "a", "files": {"doc": "/etc/passwd"}})


def test_a_run_request_takes_https_file_urls_and_nothing_else() -> None:
    url = "https://files.example.com/q3.csv?X-Amz-Signature=abc"
    assert RunRequest.model_validate({"app_id": "a", "files": {"doc": url}}).files == {"doc": url}

    with pytest.raises(ValueError, match="never accepted over HTTP") as path:
        RunRequest.model_validate({"app_id": "a", "files": {"doc": "reports/q3.csv"}})
    with pytest.raises(ValueError, match="only https:// URLs") as store:
        RunRequest.model_validate({"app_id": "a", "files": {"doc": "s3://bucket/q3.csv"}})
    with pytest.raises(ValueError, match="only https:// URLs"):
        RunRequest.model_validate({"app_id": "a", "files": {"doc": "http://example.com/q3.csv"}})
    assert "'doc'" in str(path.value)
    assert "server's own credentials" in str(store.value)


def test_a_run_request_lists_every_refused_file() -> None:
    with pytest.raises(ValueError, match=r"files: 'a': .*files: 'b': ") as refused:
        RunRequest.model_validate({"app_id": "x", "files": {"b": "s3://k/o", "a": "/etc/x"}})

    assert "never accepted" in str(refused.value)
    assert "only https://" in str(refused.value)
