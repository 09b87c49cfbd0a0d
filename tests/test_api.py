"""The Python enqueue API: local validation, idempotency keys, listing, cancel."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from worker.api.runs import cancel_run, enqueue_run, get_run, list_runs
from worker.context import Context
from worker.errors import IdempotencyConflictError, InvalidRunError, RunNotFoundError
from worker.store.ledger import RunState


@pytest.fixture
def celery() -> Iterator[Celery]:
    app = Celery("test", broker="memory://")
    yield app
    app.close()


@pytest.fixture
def ctx(context_factory: Callable[..., Context]) -> Context:
    return context_factory()


def test_enqueue_records_a_queued_run_with_absolute_file_paths(
    ctx: Context, celery: Celery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "r.csv").write_text("x")
    monkeypatch.chdir(tmp_path)

    run_id = enqueue_run("app", {"topic": "t"}, files={"doc": "r.csv"}, context=ctx, celery=celery)

    run = get_run(run_id, context=ctx)
    assert run.state is RunState.QUEUED
    assert run["files"] == {"doc": str(tmp_path / "r.csv")}


def test_bad_requests_list_every_problem_and_enqueue_nothing(
    ctx: Context, celery: Celery, tmp_path: Path
) -> None:
    with pytest.raises(InvalidRunError) as info:
        enqueue_run(
            "",
            {"topic": object()},
            files={"doc": str(tmp_path / "missing.pdf")},
            callback_url="ftp://example.com/x",
            metadata="not a dict",  # type: ignore[arg-type]
            events=["workflow_run.exploded"],
            context=ctx,
            celery=celery,
        )

    text = str(info.value)
    for expected in (
        "app_id must be a non-empty string",
        "not found",
        "JSON-serialisable",
        "metadata must be an object",
        "unknown callback events",
        "callback_url refused",
    ):
        assert expected in text
    assert list_runs(context=ctx) == []


def test_oversized_inputs_are_refused(ctx: Context, celery: Celery) -> None:
    with pytest.raises(InvalidRunError, match="pass ids, not payloads"):
        enqueue_run("app", {"blob": "x" * 100_000}, context=ctx, celery=celery)


def test_idempotency_key_returns_the_same_run_or_a_conflict(ctx: Context, celery: Celery) -> None:
    first = enqueue_run("app", {"a": 1}, idempotency_key="k1", context=ctx, celery=celery)
    again = enqueue_run("app", {"a": 1}, idempotency_key="k1", context=ctx, celery=celery)

    with pytest.raises(IdempotencyConflictError):
        enqueue_run("app", {"a": 2}, idempotency_key="k1", context=ctx, celery=celery)
    assert again == first
    assert len(list_runs(context=ctx)) == 1


def test_list_runs_filters_by_state(ctx: Context, celery: Celery) -> None:
    keep = enqueue_run("app", {}, context=ctx, celery=celery)
    gone = enqueue_run("app", {}, context=ctx, celery=celery)

    assert cancel_run(gone, context=ctx)

    assert [r.run_id for r in list_runs(state="CANCELED", context=ctx)] == [gone]
    assert [r.run_id for r in list_runs(state=RunState.QUEUED, context=ctx)] == [keep]


def test_unknown_run_is_a_clear_error(ctx: Context) -> None:
    with pytest.raises(RunNotFoundError, match="nope"):
        get_run("nope", context=ctx)


def test_a_run_without_files_is_queued_with_its_app_as_a_submit_hint(
    ctx: Context, celery: Celery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[str, list[Any]]] = []
    monkeypatch.setattr(celery, "send_task", lambda name, args, **_: sent.append((name, args)))
    (tmp_path / "r.csv").write_text("x")

    plain = enqueue_run("app", {"topic": "t"}, context=ctx, celery=celery)
    with_file = enqueue_run(
        "app", {"topic": "t"}, files={"doc": str(tmp_path / "r.csv")}, context=ctx, celery=celery
    )

    assert sent == [
        ("hatz.submit", [plain, 0, {"app_id": "app"}]),
        ("hatz.submit", [with_file, 0, None]),  # uploads come first: no shortcut to offer
    ]
