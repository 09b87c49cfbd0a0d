"""``batch.completed`` goes the way run callbacks go: the guard at delivery, the full
retry schedule, a lease the sweep re-arms, dead letters listed and replayed.

Plain functions on fakeredis, a scripted loopback receiver and a test clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from tests.conftest import make_settings
from tests.test_batches_unit import Clock, StubClient, end_run, make_batch
from tests.test_callbacks import SECRET, Receiver
from worker import task_names
from worker.batches.records import get_record, row_run_ids
from worker.batches.tick import sweep_batches, tick
from worker.cli.main import main
from worker.context import Context
from worker.store.outbox import Next
from worker.taskqueue.app import create_app
from worker.webhooks.batch_delivery import (
    deliver_batch_callback,
    failed_batch_callbacks,
    webhook_id,
)

DELAYS = "0,5,300,1800,7200,18000,36000,36000"  # the default schedule


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def build(fake_redis: fakeredis.FakeRedis) -> Callable[..., Context]:
    clock = Clock()
    client = StubClient()

    def make(**overrides: Any) -> Context:
        values: dict[str, Any] = {
            "webhook_secret": SECRET,
            "callback_retry_delays": "0,0.05,0.1",
            "callback_timeout": 2.0,
            "callback_connect_timeout": 1.0,
            "poll_jitter": 0.0,
            **overrides,
        }
        return Context.from_settings(
            make_settings(**values),
            redis_client=fake_redis,
            client=client,  # type: ignore[arg-type]
            clock=clock,
        )

    return make


def finished_batch(ctx: Context, tmp_path: Path, url: str) -> tuple[str, list[Next]]:
    """A one-row batch whose run ended; its id and what the finishing tick queued."""
    batch_id, _ = make_batch(ctx, tmp_path, rows=1, limit=1, callback_url=url)
    end_run(ctx, row_run_ids(ctx, batch_id)[0])
    steps = tick(ctx, batch_id)
    assert [s.task for s in steps] == [task_names.DELIVER_BATCH_CALLBACK]
    return batch_id, steps


def deliver_all(ctx: Context, steps: list[Next], **kw: Any) -> list[Next]:
    """Run delivery tasks like a worker would until none is left; every step run."""
    done: list[Next] = []
    queue = list(steps)
    while queue and len(done) < 20:
        step = queue.pop(0)
        assert step.task == task_names.DELIVER_BATCH_CALLBACK
        done.append(step)
        queue += deliver_batch_callback(ctx, *step.args, **kw)
    return done


def test_a_host_that_resolves_to_a_private_address_is_refused_at_delivery(
    build: Callable[..., Context], receiver: Receiver, tmp_path: Path
) -> None:
    # Given a batch whose callback host passed the form check at creation...
    port = receiver.server.server_address[1]
    ctx = build(callback_allow_private=True)
    batch_id, steps = finished_batch(ctx, tmp_path, f"http://hooks.example.com:{port}/h")

    # ...but resolves to loopback when the callback is delivered
    guarded = build(callback_allow_private=False)
    deliver_all(guarded, steps, resolver=lambda host, port: ["127.0.0.1"])

    # Then nothing was sent and the callback is a dead letter saying why
    assert receiver.requests == []
    record = get_record(guarded, batch_id)
    assert record["callback_state"] == "failed"
    assert "refused by the SSRF guard" in record["callback_error"]
    assert "loopback" in record["callback_error"]
    assert [f.batch_id for f in failed_batch_callbacks(guarded)] == [batch_id]


def test_every_retry_of_the_schedule_is_tried_long_ones_through_the_sweep(
    build: Callable[..., Context], receiver: Receiver, tmp_path: Path
) -> None:
    # Given the default retry schedule (hours) and a receiver down for all of it
    ctx = build(callback_retry_delays=DELAYS, visibility_timeout=600)
    receiver.script = [(503, {}, b"down")] * 8
    batch_id, steps = finished_batch(ctx, tmp_path, receiver.url)
    clock: Clock = ctx.clock  # type: ignore[assignment]

    # When each due delivery runs: countdowns as held, longer waits via the sweep
    attempts = 0
    while steps and attempts < 20:
        step = steps.pop(0)
        clock.now += step.countdown or 0.0
        steps += deliver_batch_callback(ctx, *step.args)
        attempts += 1
        if not steps and get_record(ctx, batch_id)["callback_state"] == "retrying":
            clock.now += 36_000 + ctx.settings.sweep_grace + 1
            steps += sweep_batches(ctx)

    # Then all eight attempts were made before the callback was given up
    assert len(receiver.requests) == 8
    record = get_record(ctx, batch_id)
    assert record["callback_state"] == "failed"
    assert record["callback_error"] == "HTTP 503 after 8 attempt(s)"
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {webhook_id(batch_id)}


def test_a_delivery_lost_after_the_batch_finished_is_re_armed_by_the_sweep(
    build: Callable[..., Context], receiver: Receiver, tmp_path: Path
) -> None:
    # Given a batch that finished, whose delivery task was lost before it ran
    ctx = build()
    batch_id, lost = finished_batch(ctx, tmp_path, receiver.url)
    clock: Clock = ctx.clock  # type: ignore[assignment]
    assert sweep_batches(ctx) == []  # not overdue yet

    # When the sweep runs once the pick-up grace is over
    clock.now += 300
    rearmed = sweep_batches(ctx)
    assert [s.task for s in rearmed] == [task_names.DELIVER_BATCH_CALLBACK]
    deliver_all(ctx, rearmed)
    assert len(receiver.requests) == 1
    # ...and the lost task surfaces after all
    deliver_all(ctx, lost)

    # Then the callback was delivered exactly once, and nothing is left to re-arm
    assert len(receiver.requests) == 1
    assert get_record(ctx, batch_id)["callback_state"] == "delivered"
    clock.now += 3600
    assert sweep_batches(ctx) == []


def test_a_worker_killed_mid_send_is_re_armed_once_the_lease_is_over(
    build: Callable[..., Context], receiver: Receiver, tmp_path: Path
) -> None:
    port = receiver.server.server_address[1]
    ctx = build()
    batch_id, steps = finished_batch(ctx, tmp_path, f"http://hooks.example.com:{port}/h")
    clock: Clock = ctx.clock  # type: ignore[assignment]

    def killed(host: str, port: int) -> list[str]:
        raise RuntimeError("the worker died here")

    # Given a delivery that claimed the batch and died before recording anything
    with pytest.raises(RuntimeError):
        deliver_batch_callback(ctx, *steps[0].args, resolver=killed)
    assert get_record(ctx, batch_id)["callback_state"] == "sending"

    # Then the sweep leaves it alone during its lease and re-arms it afterwards
    clock.now += 60
    assert sweep_batches(ctx) == []
    clock.now += 600
    rearmed = sweep_batches(ctx)
    assert [s.task for s in rearmed] == [task_names.DELIVER_BATCH_CALLBACK]
    deliver_all(ctx, rearmed, resolver=lambda host, port: ["127.0.0.1"])
    assert len(receiver.requests) == 1
    assert get_record(ctx, batch_id)["callback_state"] == "delivered"


def test_dead_letters_are_listed_and_replayed_from_the_cli(
    build: Callable[..., Context],
    receiver: Receiver,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a batch callback the receiver refused
    ctx = build()
    receiver.script = [(410, {}, b"gone")]
    batch_id, steps = finished_batch(ctx, tmp_path, receiver.url)
    deliver_all(ctx, steps)
    app = create_app(ctx.settings)
    app.conf.update(broker_url="memory://")

    # When the dead letters are listed
    assert main(["callbacks", "failed"], context=ctx, celery=app) == 0
    listed = capsys.readouterr().out
    assert batch_id in listed
    assert "HTTP 410 after 1 attempt(s)" in listed
    assert "hooksecret" not in listed

    # And replayed once the receiver is fixed
    assert main(["callbacks", "replay", batch_id], context=ctx, celery=app) == 0
    assert f"batch {batch_id}: callback replay queued" in capsys.readouterr().out
    record = get_record(ctx, batch_id)
    assert record["callback_state"] == "pending"
    deliver_all(
        ctx, [Next(task_names.DELIVER_BATCH_CALLBACK, (batch_id, record["callback_token"]))]
    )

    # Then it is delivered with the same webhook-id and leaves the list
    assert [r["headers"]["webhook-id"] for r in receiver.requests] == [webhook_id(batch_id)] * 2
    assert get_record(ctx, batch_id)["callback_state"] == "delivered"
    assert failed_batch_callbacks(ctx) == []
    assert main(["callbacks", "replay", batch_id], context=ctx, celery=app) == 1
    assert "not dead-lettered" in capsys.readouterr().err
    app.close()
