"""Parked polls (HATZ_COUNTDOWN_HORIZON) and the dispatcher, on fakeredis with a fake clock."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.test_pipeline_unit import Harness, StubClient, harness, job, submitted
from worker import task_names
from worker.context import Context
from worker.runs.cancel import cancel
from worker.runs.dispatcher import dispatch_due, tick_interval
from worker.runs.poll import poll_step
from worker.runs.poll_hints import poll_hint
from worker.runs.sweeper import sweep
from worker.store.ledger import RunState
from worker.store.outbox import Next

__all__ = ["harness"]  # the fixture, shared with the pipeline tests


class Sent:
    """Records what the dispatcher would publish (one call per tick's batch)."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, list[Any], float | None]] = []
        self.batches = 0

    def __call__(self, steps: Sequence[Next]) -> None:
        self.batches += 1
        self.tasks += [(s.task, list(s.args), s.countdown or None) for s in steps]


def parked_poll(
    h: Callable[..., Harness], **overrides: Any
) -> tuple[Context, StubClient, Any, str]:
    """A RUNNING run whose next poll (20 s off) is parked with a 10 s horizon."""
    ctx, client, clock = h(
        poll_jitter=0.0, poll_backoff=1.0, poll_interval=20.0, countdown_horizon=10.0, **overrides
    )
    run_id, token = submitted(ctx)
    client.jobs = [job("running")]
    assert poll_step(ctx, run_id, token) == []  # nothing published: parked
    return ctx, client, clock, run_id


def test_a_far_off_poll_is_parked_in_redis_not_published(harness: Callable[..., Harness]) -> None:
    ctx, _, clock, run_id = parked_poll(harness)

    run = ctx.ledger.require(run_id)
    assert ctx.redis.zscore(ctx.keys.parked, run_id) == pytest.approx(clock.now + 20.0)
    assert run["next_at"] == pytest.approx(clock.now + 20.0)  # the sweeper still watches it
    assert run.state is RunState.RUNNING


def test_the_dispatcher_publishes_a_parked_poll_as_a_countdown_once_within_the_horizon(
    harness: Callable[..., Harness],
) -> None:
    ctx, client, clock, run_id = parked_poll(harness)
    sent = Sent()
    due = clock.now + 20.0

    clock.now += 9.0  # due in 11 s: outside the 10 s horizon
    assert dispatch_due(ctx, sent) == 0
    clock.now += 2.0  # due in 9 s
    assert dispatch_due(ctx, sent) == 1
    assert dispatch_due(ctx, sent) == 0  # taken once only

    ((name, (sent_id, token, hint), countdown),) = sent.tasks
    assert (name, sent_id) == (task_names.POLL, run_id)
    assert countdown == pytest.approx(due - clock.now)
    assert ctx.redis.zcard(ctx.keys.parked) == 0
    # The published poll is the run's live chain, its hint what the record says.
    assert hint == poll_hint(ctx.ledger.require(run_id))
    client.jobs = [job("complete")]
    clock.now = due
    poll_step(ctx, run_id, token, hint)
    assert ctx.ledger.require(run_id).state is RunState.COMPLETED


def test_an_overdue_parked_poll_goes_out_at_once(harness: Callable[..., Harness]) -> None:
    ctx, _, clock, _ = parked_poll(harness)
    sent = Sent()
    clock.now += 300.0  # e.g. no worker ran for a while

    assert dispatch_due(ctx, sent) == 1
    assert sent.tasks[0][2] is None  # no countdown: due now


def test_canceled_and_rearmed_runs_leave_the_parked_list(harness: Callable[..., Harness]) -> None:
    ctx, _, _, run_id = parked_poll(harness)
    assert cancel(ctx, run_id)[0]
    assert ctx.redis.zcard(ctx.keys.parked) == 0

    ctx2, _, clock2, run_id2 = parked_poll(harness)
    clock2.now += 20.0 + ctx2.settings.sweep_grace + 1  # as if no dispatcher ever ran
    report = sweep(ctx2)
    assert run_id2 in report.rearmed
    assert ctx2.redis.zscore(ctx2.keys.parked, run_id2) is None  # the re-arm owns the chain now
    assert dispatch_due(ctx2, Sent()) == 0


def test_a_parked_run_that_ended_meanwhile_is_dropped_not_published(
    harness: Callable[..., Harness],
) -> None:
    ctx, _, clock, run_id = parked_poll(harness)
    ctx.redis.zadd(ctx.keys.parked, {"gone": clock.now})  # a run whose record expired
    ctx.ledger.cas(run_id, states=None, to=RunState.FAILED, next_at=clock.now + 5)  # not via CAS
    ctx.redis.zadd(ctx.keys.parked, {run_id: clock.now})
    sent = Sent()

    assert dispatch_due(ctx, sent) == 0
    assert ctx.redis.zcard(ctx.keys.parked) == 0


def test_horizon_zero_never_parks_and_the_tick_stays_inside_the_horizon(
    harness: Callable[..., Harness],
) -> None:
    ctx, client, _ = harness(poll_jitter=0.0, poll_interval=20.0, countdown_horizon=0.0)
    run_id, token = submitted(ctx)
    client.jobs = [job("running")]
    (step,) = poll_step(ctx, run_id, token)
    assert step.countdown == 20.0
    assert ctx.redis.zcard(ctx.keys.parked) == 0

    assert tick_interval(ctx.settings) == 1.0
    ctx10, _, _ = harness(countdown_horizon=10.0)
    ctx2, _, _ = harness(countdown_horizon=2.0)
    assert tick_interval(ctx10.settings) == 1.0
    assert tick_interval(ctx2.settings) == 0.5


def test_dispatch_takes_large_backlogs_in_batches(harness: Callable[..., Harness]) -> None:
    ctx, _, clock, run_id = parked_poll(harness)
    token = ctx.ledger.require(run_id).token
    for i in range(25):  # more parked runs than one batch
        ctx.ledger.cas(run_id, states=None, token=token)  # keep the real one parked
        ctx.redis.zadd(ctx.keys.parked, {f"ghost-{i}": clock.now})
    sent = Sent()
    clock.now += 15.0

    assert dispatch_due(ctx, sent, batch=10) == 1
    assert ctx.redis.zcard(ctx.keys.parked) == 0
    assert sent.batches == 1  # the one live run, published in one batch
