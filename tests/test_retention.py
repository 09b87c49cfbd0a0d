"""Redis that does not grow forever, as plain functions on fakeredis: the sweeper trims the
time-scored indexes without anyone listing, abandoned batches expire, the batch-key map
never exists without its expiry. (The soak with real processes: test_soak.py.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_batches_unit import (  # the batch tests' stub client, clock and helpers
    Harness,
    _dies_at_row,
    harness,
    make_batch,
)
from worker.batches.abandon import CREATING_GRACE
from worker.batches.tick import sweep_batches
from worker.context import Context
from worker.errors import InvalidBatchError
from worker.runs.sweeper import sweep
from worker.store.ledger import RunState
from worker.webhooks.delivery import index_dead_letter

__all__ = ["harness"]  # the fixture, imported for these tests

RETENTION = 3600


def _finished_run(ctx: Context) -> str:
    run_id, _ = ctx.ledger.create({"app_id": "app", "inputs": {}})
    assert ctx.ledger.cas(run_id, states=None, to=RunState.COMPLETED)
    return run_id


def _members(ctx: Context, key: str) -> list[str]:
    return [str(m) for m in ctx.redis.zrange(key, 0, -1)]


def test_the_sweeper_trims_runs_batches_and_dead_letters_by_score_without_listing(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    ctx, _, clock = harness(run_retention=RETENTION)
    old = _finished_run(ctx)
    index_dead_letter(ctx, old)
    old_batch, _ = make_batch(ctx, tmp_path, rows=1, limit=1)

    clock.now += RETENTION + 1
    young = _finished_run(ctx)
    index_dead_letter(ctx, young)
    young_batch, _ = make_batch(ctx, tmp_path, rows=1, limit=1)

    report = sweep(ctx)

    assert old not in _members(ctx, ctx.keys.runs)
    assert young in _members(ctx, ctx.keys.runs)
    assert _members(ctx, ctx.keys.batches) == [young_batch]
    assert old_batch not in _members(ctx, ctx.keys.batches)
    assert _members(ctx, ctx.keys.failed_callbacks) == [young]
    assert report.trimmed == {
        ctx.keys.runs: 2,  # the old run and the old batch's one row
        ctx.keys.batches: 1,
        ctx.keys.failed_callbacks: 1,
        ctx.keys.failed_batch_callbacks: 0,
    }


def test_an_abandoned_batch_expires_with_its_lists(
    harness: Callable[..., Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, _, clock = harness(run_retention=RETENTION)
    _dies_at_row(ctx, monkeypatch, 3)
    with pytest.raises(RuntimeError):
        make_batch(ctx, tmp_path, rows=5, limit=2, batch_key="nightly")
    (batch_id,) = _members(ctx, ctx.keys.active_batches)
    monkeypatch.undo()

    clock.now += CREATING_GRACE + 1
    sweep_batches(ctx)

    assert 0 < ctx.redis.ttl(ctx.keys.batch(batch_id)) <= RETENTION
    assert not ctx.redis.exists(ctx.keys.batch_created(batch_id))
    # Even the batch-key map of a creation that died mid-way has its expiry.
    assert 0 < ctx.redis.ttl(ctx.keys.batch_key("nightly")) <= RETENTION


def test_a_creation_that_outlives_the_grace_leaves_nothing_without_an_expiry(
    harness: Callable[..., Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, _, clock = harness(run_retention=RETENTION)

    def abandoned_meanwhile() -> None:
        clock.now += CREATING_GRACE + 1
        sweep_batches(ctx)

    _dies_at_row(ctx, monkeypatch, 3, then=abandoned_meanwhile)
    with pytest.raises(InvalidBatchError, match="interrupted"):
        make_batch(ctx, tmp_path, rows=5, limit=2, batch_key="k")

    (batch_id,) = _members(ctx, ctx.keys.batches)
    for key in (ctx.keys.batch(batch_id), ctx.keys.batch_rows(batch_id)):
        assert 0 < ctx.redis.ttl(key) <= RETENTION, key
    assert ctx.redis.ttl(ctx.keys.batch_pending(batch_id)) in (-2, *range(1, RETENTION + 1))
    assert not ctx.redis.exists(ctx.keys.batch_created(batch_id))
    # Every key left is on its way out: no key without an expiry but the indexes.
    indexes = {ctx.keys.runs, ctx.keys.batches, ctx.keys.metrics, ctx.keys.schedule}
    for key in ctx.redis.scan_iter(match=f"{ctx.keys.prefix}:*"):
        if str(key) not in indexes:
            assert ctx.redis.ttl(key) > 0, key


def test_every_key_a_finished_batch_and_its_runs_leave_expires(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    ctx, _, _ = harness(run_retention=RETENTION)
    batch_id, _ = make_batch(ctx, tmp_path, rows=3, limit=3, batch_key="daily")
    for run_id in _members(ctx, ctx.keys.runs):
        assert ctx.ledger.cas(run_id, states=None, to=RunState.COMPLETED)
    sweep_batches(ctx)

    assert ctx.redis.hget(ctx.keys.batch(batch_id), "state") == "finished"
    indexes = {ctx.keys.runs, ctx.keys.batches, ctx.keys.metrics, ctx.keys.schedule}
    for key in ctx.redis.scan_iter(match=f"{ctx.keys.prefix}:*"):
        if str(key) not in indexes:
            assert 0 < ctx.redis.ttl(key) <= RETENTION, key
