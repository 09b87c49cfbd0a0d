"""The archive step called directly: a fakeredis ledger, the Hatz client against the fake
Hatz server for a real document, and local archive folders (one that cannot be written)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from tests.conftest import make_settings
from worker import task_names
from worker.context import Context
from worker.fake_hatz import REPORT_SUMMARIZER_ID, FakeHatz, ManualClock, seed_default_apps
from worker.hatz.client import HatzClient
from worker.runs.archive import archive_step
from worker.runs.finish import finish
from worker.runs.sweeper import sweep
from worker.store.ledger import RunState
from worker.store.outbox import Next

KEY = "hatz-test-key-archive"


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hatz_clock() -> ManualClock:
    return ManualClock(start=1_800_000_000.0)


@pytest.fixture
def fake(hatz_clock: ManualClock) -> Iterator[FakeHatz]:
    with FakeHatz(api_key=KEY, clock=hatz_clock) as server:
        seed_default_apps(server)
        yield server


@pytest.fixture
def document(fake: FakeHatz, hatz_clock: ManualClock, tmp_path: Path) -> tuple[str, str, bytes]:
    """A completed job's document: (presigned URL, step id, its bytes)."""
    with HatzClient(api_key=KEY, base_url=fake.url, retries=0) as client:
        report = tmp_path / "report.csv"
        report.write_text("a,b\n1,2\n")
        uploaded = client.upload_file(report, scope_id=REPORT_SUMMARIZER_ID)
        job = client.run_workflow(
            REPORT_SUMMARIZER_ID, {"report_file": uploaded.file_uuid, "summary_style": "brief"}
        )
        hatz_clock.advance(60)
        (step,) = [s for s in client.get_job(job.job_id).step_outputs if s.output_type != "dump"]
        url = client.presigned_url(job.job_id, step.step_id, expires_in=600).url
        with client.open_document(url) as served:
            data = b"".join(served.chunks)
    return url, step.step_id, data


Build = Callable[..., tuple[Context, Clock]]


@pytest.fixture
def build(fake: FakeHatz, fake_redis: fakeredis.FakeRedis) -> Iterator[Build]:
    made: list[Context] = []

    def make(**overrides: Any) -> tuple[Context, Clock]:
        clock = Clock()
        settings = make_settings(base_url=fake.url, api_key=KEY, **overrides)
        ctx = Context.from_settings(
            settings,
            redis_client=fake_redis,
            client=HatzClient.from_settings(settings),
            clock=clock,
        )
        made.append(ctx)
        return ctx, clock

    yield make
    for ctx in made:
        ctx.client.close()


def _completed(ctx: Context, clock: Clock, url: str, step_id: str) -> tuple[str, list[Next]]:
    """A run that has just completed with one document and a callback."""
    run_id, _ = ctx.ledger.create(
        {"app_id": "app", "inputs": {}, "callback_url": "https://hooks.example.com/h"}
    )
    documents = {step_id: {"url": url, "expires_at": clock() + 600}}
    steps = finish(ctx, run_id, 0, RunState.COMPLETED, fields={"documents": documents})
    return run_id, steps


def test_a_completed_run_copies_its_documents_before_the_callback(
    build: Build, document: tuple[str, str, bytes], tmp_path: Path
) -> None:
    url, step_id, data = document
    root = (tmp_path / "archive").as_uri() + "/"
    ctx, clock = build(archive_url=root)

    run_id, steps = _completed(ctx, clock, url, step_id)
    after_archive = archive_step(ctx, run_id, 0)

    assert steps == [Next(task_names.ARCHIVE, (run_id, 0))]  # not the callback yet
    assert after_archive == [Next(task_names.DELIVER_CALLBACK, (run_id, 0))]
    run = ctx.ledger.require(run_id)
    archived = run["documents"][step_id]["archive"]
    assert run["archive_state"] == "done"
    assert archived["sha256"] == hashlib.sha256(data).hexdigest()
    assert archived["size"] == len(data)
    assert Path(archived["url"].removeprefix("file://")).read_bytes() == data


def test_a_failing_archive_is_retried_then_given_up_and_never_fails_the_run(
    build: Build, document: tuple[str, str, bytes], tmp_path: Path
) -> None:
    url, step_id, _ = document
    (tmp_path / "blocker").write_text("a file where the archive folder should be")
    ctx, clock = build(
        archive_url=(tmp_path / "blocker").as_uri() + "/archive/", archive_retry_delays="0.5"
    )
    run_id, _ = _completed(ctx, clock, url, step_id)

    retry = archive_step(ctx, run_id, 0)
    retrying = ctx.ledger.require(run_id)
    stale = archive_step(ctx, run_id, 0)
    given_up = archive_step(ctx, run_id, 1)

    assert retry == [Next(task_names.ARCHIVE, (run_id, 1), 0.5)]
    assert retrying["archive_state"] == "retrying"
    assert stale == []
    assert given_up == [Next(task_names.DELIVER_CALLBACK, (run_id, 0))]
    run = ctx.ledger.require(run_id)
    assert run.state is RunState.COMPLETED
    assert run["archive_state"] == "failed"
    assert run["archive_error"].startswith(f"step {step_id}: ")
    assert "archive" not in run["documents"][step_id]


def test_the_sweeper_restarts_a_lost_archive_copy(
    build: Build, document: tuple[str, str, bytes], tmp_path: Path
) -> None:
    url, step_id, _ = document
    ctx, clock = build(archive_url=(tmp_path / "archive").as_uri() + "/")
    run_id, _ = _completed(ctx, clock, url, step_id)

    clock.now += 3600  # the archive task was lost; its run is long overdue
    report = sweep(ctx)

    assert Next(task_names.ARCHIVE, (run_id, 1)) in report.steps
    assert Next(task_names.DELIVER_CALLBACK, (run_id, 1)) not in report.steps


def test_without_an_archive_the_callback_follows_at_once(
    build: Build, document: tuple[str, str, bytes]
) -> None:
    url, step_id, _ = document
    ctx, clock = build()

    run_id, steps = _completed(ctx, clock, url, step_id)

    assert steps == [Next(task_names.DELIVER_CALLBACK, (run_id, 0))]
    assert "archive_state" not in ctx.ledger.require(run_id)
