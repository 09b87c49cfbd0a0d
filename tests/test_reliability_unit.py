"""Reliability building blocks without processes: the startup check, the kombu
restore guard, and the sweeper's batches, concurrency and stall detection."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis
from kombu.connection import Connection
from kombu.transport import redis as kombu_redis

from tests.conftest import make_settings
from worker import task_names
from worker.context import Context
from worker.local.stack import LocalRedis
from worker.runs.sweeper import sweep
from worker.store.ledger import RunState
from worker.taskqueue import kombu_fixes
from worker.taskqueue.config import TASK_TIME_LIMIT, celery_config, startup_problems


def test_worker_refuses_a_visibility_timeout_shorter_than_countdown_plus_time_limit() -> None:
    short = make_settings(visibility_timeout=600)
    enough = make_settings(visibility_timeout=3600)

    (problem,) = startup_problems(short)

    assert "HATZ_VISIBILITY_TIMEOUT" in problem
    assert startup_problems(enough) == []
    assert enough.visibility_timeout > enough.longest_countdown() + TASK_TIME_LIMIT


def test_result_backend_gets_its_own_socket_options() -> None:
    conf = celery_config(make_settings(worker_eta_task_limit=123))

    assert conf["redis_socket_timeout"] == conf["broker_transport_options"]["socket_timeout"]
    assert conf["redis_retry_on_timeout"] is True
    assert conf["redis_backend_health_check_interval"] > 0
    assert conf["result_backend_transport_options"]["visibility_timeout"] == 600
    assert conf["worker_eta_task_limit"] == 123
    assert conf["task_acks_late"]
    assert conf["task_reject_on_worker_lost"]


class _Transport:
    client: Any = None


class _Channel:
    connection: Any = None


def test_kombu_guard_skips_the_restore_when_the_transport_is_detached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given the guard and a QoS whose channel's transport lost its client
    assert kombu_fixes.apply()
    assert kombu_fixes.apply()  # idempotent
    channel = _Channel()
    channel.connection = _Transport()
    qos: Any = kombu_redis.QoS.__new__(kombu_redis.QoS)
    qos.channel = channel
    qos._delivered = {"tag-1": object(), "tag-2": object()}

    # When kombu restores unacked messages, then it does not crash
    with caplog.at_level(logging.WARNING):
        assert qos.restore_unacked() is None

    assert qos._delivered == {}
    assert "leaving 2 unacknowledged message(s)" in caplog.text


def _overdue_runs(ctx: Context, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        run_id, _ = ctx.ledger.create({"app_id": "a", "inputs": {}}, first_due_in=-1000)
        ctx.ledger.cas(run_id, states=None, to=RunState.SUBMITTED, next_at=ctx.clock() - 1000)
        ids.append(run_id)
    return ids


def test_sweeper_handles_a_backlog_larger_than_one_batch(
    context_factory: Callable[..., Context],
) -> None:
    ctx = context_factory(sweep_batch=7, sweep_grace=1)
    ids = _overdue_runs(ctx, 30)

    report = sweep(ctx)

    assert sorted(report.rearmed) == sorted(ids)
    assert [s.task for s in report.steps] == [task_names.POLL] * 30
    assert ctx.ledger.due(ctx.clock() - 1) == []


def test_two_overlapping_sweeps_rearm_each_run_once(
    context_factory: Callable[..., Context],
) -> None:
    # Given two beats whose leases both let them sweep (the lease expired mid-sweep)
    ctx = context_factory(sweep_grace=1)
    ids = _overdue_runs(ctx, 10)
    first = sweep(ctx)
    ctx.redis.delete(ctx.keys.lease("sweeper"))
    for run_id in ids:  # the second sweeper read the schedule before the first wrote it
        ctx.redis.zadd(ctx.keys.schedule, {run_id: ctx.clock() - 1000})
    tokens = {r: ctx.ledger.require(r).token for r in ids}

    second = sweep(ctx)

    # Then only tasks carrying the current token exist: stale ones are no-ops
    assert len(first.steps) == 10
    current = [s for s in [*first.steps, *second.steps] if s.args[1] == tokens[s.args[0]]]
    assert len({s.args[0] for s in current}) == 10
    assert all(len([s for s in current if s.args[0] == r]) == 1 for r in ids)


def test_a_second_sweeper_inside_the_lease_does_nothing(
    context_factory: Callable[..., Context],
) -> None:
    ctx = context_factory(sweep_grace=1)
    _overdue_runs(ctx, 3)

    assert sweep(ctx).ran
    assert not sweep(ctx).ran


def test_a_run_no_task_claims_for_stall_after_is_reported_stalled(
    context_factory: Callable[..., Context],
) -> None:
    ctx = context_factory(sweep_grace=1, stall_after=60)
    (run_id,) = _overdue_runs(ctx, 1)
    ctx.redis.hset(ctx.keys.run(run_id), "created_at", repr(ctx.clock() - 3600))

    report = sweep(ctx)

    assert report.stalled == [run_id]
    assert report.rearmed == [run_id]


def test_sweeper_never_marks_ambiguous_a_run_whose_submit_just_reported_back(
    context_factory: Callable[..., Context],
) -> None:
    # Given a run the sweeper read as SUBMITTING with the send in flight
    ctx = context_factory(sweep_grace=1)
    run_id, _ = ctx.ledger.create({"app_id": "a", "inputs": {}}, first_due_in=-1000)
    ctx.ledger.cas(run_id, states=None, to=RunState.SUBMITTING, fields={"submit_inflight": True})
    real_get = ctx.ledger.get

    def get_then_submit(rid: str) -> Any:
        run = real_get(rid)
        # ...and the send reports back (same token) right after that read
        ctx.ledger.cas(rid, states=None, to=RunState.SUBMITTED, fields={"job_id": "j"})
        ctx.ledger.get = real_get  # type: ignore[method-assign]
        return run

    ctx.ledger.get = get_then_submit  # type: ignore[method-assign,assignment]

    report = sweep(ctx)

    assert report.ambiguous == []
    assert ctx.ledger.require(run_id).state is RunState.SUBMITTED


def test_sweeper_leaves_alone_a_run_that_moved_on_after_the_schedule_was_read(
    context_factory: Callable[..., Context],
) -> None:
    # Given a polling run that was overdue when the sweeper read the schedule...
    ctx = context_factory(sweep_grace=1)
    (run_id,) = _overdue_runs(ctx, 1)
    real_get = ctx.ledger.get

    def get_after_completion(rid: str) -> Any:
        # ...but completed, with its callback being delivered, before the sweeper read it
        ctx.ledger.cas(
            rid,
            states=None,
            to=RunState.COMPLETED,
            next_at=ctx.clock() + 120,
            fields={"callback_state": "sending", "callback_url": "http://x"},
        )
        ctx.ledger.get = real_get  # type: ignore[method-assign]
        return real_get(rid)

    ctx.ledger.get = get_after_completion  # type: ignore[method-assign,assignment]
    token = ctx.ledger.require(run_id).get("callback_token") or 0

    report = sweep(ctx)

    # Then its delivery is not re-armed (that would send the callback twice)
    assert report.steps == []
    assert (ctx.ledger.require(run_id).get("callback_token") or 0) == token


def test_the_job_id_write_outlasts_a_short_redis_outage(
    context_factory: Callable[..., Context],
) -> None:
    # Given Redis refusing the first two attempts of a write
    ctx = context_factory()
    run_id, _ = ctx.ledger.create({"app_id": "a", "inputs": {}})
    real = ctx.redis.evalsha
    failures = [redis.ConnectionError("down"), redis.TimeoutError("slow")]

    def flaky(*args: Any) -> Any:
        if failures:
            raise failures.pop(0)
        return real(*args)

    ctx.redis.evalsha = flaky  # type: ignore[method-assign,assignment]

    # When the write is durable, then it lands once Redis answers
    result = ctx.ledger.cas_durable(5.0, run_id=run_id, states=None, fields={"job_id": "j"})

    assert result.ok
    assert ctx.ledger.require(run_id)["job_id"] == "j"


def test_kombu_channel_reuses_one_sync_client_per_pool_and_still_moves_messages() -> None:
    assert kombu_fixes.apply_client_reuse()
    assert kombu_fixes.apply_client_reuse()  # idempotent
    with LocalRedis() as server, Connection(server.url) as conn:  # type: ignore[no-untyped-call]
        channel: Any = conn.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        assert channel._create_client(asynchronous=True) is not first  # event-loop client as is
        channel._pool = None  # what a reconnect does: a new pool gets a new client
        second = channel._create_client()
        assert second is not first
        assert second.connection_pool is channel.pool

        queue = conn.SimpleQueue("kombu-fix-check")
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        message.ack()
        assert message.payload == {"n": 1}
        queue.close()
