"""A scheduled firing survives a bad minute: the error is recorded on the schedule (and
shown by ``hatz-worker schedules list``), the firing is retried within its slot, and
a firing lost with its worker is reported instead of vanishing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis

from tests.conftest import make_settings
from tests.test_batches_unit import APP, Clock, StubClient
from worker import task_names
from worker.batches.schedules import fire, schedule_state
from worker.cli.main import main
from worker.context import Context
from worker.errors import HatzServerError
from worker.hatz.types import App
from worker.taskqueue.app import create_app


class FlakyClient(StubClient):
    """The Hatz API answering with the given errors first, then normally."""

    def __init__(self, errors: list[Exception]) -> None:
        super().__init__()
        self.errors = errors

    def get_app(self, app_id: str) -> App:
        if self.errors:
            raise self.errors.pop(0)
        return APP


def schedule_ctx(
    fake_redis: fakeredis.FakeRedis, client: StubClient, every: float = 3600
) -> Context:
    spec = [{"name": "s", "every": every, "app_id": "app", "inputs": {"topic": "x"}}]
    return Context.from_settings(
        make_settings(schedules=json.dumps(spec)),
        redis_client=fake_redis,
        client=client,  # type: ignore[arg-type]
        clock=Clock(),
    )


def test_a_hatz_5xx_is_recorded_and_the_firing_retried_within_its_slot(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    # Given a schedule whose firing meets a Hatz 5xx
    ctx = schedule_ctx(fake_redis, FlakyClient([HatzServerError(503, "unavailable")]))

    # When beat fires it
    first = fire(ctx, "s")

    # Then the error is on the schedule and a retry is queued, not an exception raised
    assert first.outcome == "error"
    state = schedule_state(ctx, "s")
    assert state["last_outcome"] == "error"
    assert "503" in state["last_error"]
    (retry,) = first.steps
    assert retry.task == task_names.FIRE_SCHEDULE
    assert retry.countdown > 0

    # And the retry, run when due, starts the batch; a second copy of it does nothing
    name, reason, slot, firing, attempt = retry.args
    again = fire(ctx, name, reason=reason, slot=slot, firing=firing, attempt=attempt)
    assert again.outcome == "fired"
    assert schedule_state(ctx, "s")["last_batch"] == again.batch_id
    duplicate = fire(ctx, "s", reason="retry", slot=slot, firing=firing)
    assert duplicate.outcome == "duplicate"
    assert fire(ctx, "s").outcome == "duplicate"  # the slot stays fired once


def test_a_redis_blip_while_creating_the_batch_is_retried(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    ctx = schedule_ctx(fake_redis, FlakyClient([redis.ConnectionError("connection reset")]))

    first = fire(ctx, "s")

    assert first.outcome == "error"
    assert "ConnectionError" in schedule_state(ctx, "s")["last_error"]
    assert [s.task for s in first.steps] == [task_names.FIRE_SCHEDULE]


def test_retries_stop_when_the_slot_is_over(fake_redis: fakeredis.FakeRedis) -> None:
    # Given an interval of 10 s (a slot of 8 s) and an API failing throughout
    ctx = schedule_ctx(fake_redis, FlakyClient([HatzServerError(500, "boom")] * 5), every=10)

    result = fire(ctx, "s")

    # Then no retry is queued past the slot, and the schedule says it gave up
    assert result.outcome == "error"
    assert result.steps == []
    assert "gave up" in schedule_state(ctx, "s")["last_error"]


def test_a_firing_lost_with_its_worker_is_reported_by_the_next_one(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    # Given a firing that marked itself under way, then lost its worker (SIGKILL:
    # nothing after the mark ran), and whose slot has since expired
    ctx = schedule_ctx(fake_redis, FlakyClient([]), every=60)
    clock: Clock = ctx.clock  # type: ignore[assignment]
    mark = json.dumps({"slot": "interval", "at": clock.now})
    fake_redis.hset(ctx.keys.schedule_state("s"), "firing", mark)

    # When the next firing comes, an hour later
    clock.now += 3600
    result = fire(ctx, "s")

    # Then it fires, and the lost one is recorded as an error on the schedule
    assert result.outcome == "fired"
    state = schedule_state(ctx, "s")
    assert "slot interval never ended" in state["last_error"]
    assert state["count_error"] == "1"
    assert "firing" not in state


@pytest.fixture
def failed_schedule(fake_redis: fakeredis.FakeRedis) -> Iterator[tuple[Context, Any]]:
    ctx = schedule_ctx(fake_redis, FlakyClient([HatzServerError(502, "bad gateway")]))
    fire(ctx, "s")
    app = create_app(ctx.settings)
    app.conf.update(broker_url="memory://")
    yield ctx, app
    app.close()


def test_the_schedules_list_shows_the_last_error(
    failed_schedule: tuple[Context, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    ctx, app = failed_schedule

    code = main(["schedules", "list"], context=ctx, celery=app)

    out = capsys.readouterr().out
    assert code == 0
    assert "LAST ERROR" in out
    assert "502" in out
    assert "retry 1 in 10 s" in out
