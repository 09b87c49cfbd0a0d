"""The transactional outbox: messages built by Celery/kombu, pushed by the ledger's
compare-and-set only when it succeeds. A private redis-server (kombu's Redis
transport needs a real one)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery
from celery._state import _task_stack

from tests.conftest import make_settings
from tests.test_pipeline_unit import StubClient, job
from worker import task_names
from worker.context import Context
from worker.local.stack import LocalRedis
from worker.runs.dispatcher import publish_batched
from worker.runs.poll import poll_step
from worker.runs.submit import submit_step
from worker.store.ledger import PRE_SUBMIT_STATES
from worker.store.outbox import Next, Outbox, send_step
from worker.taskqueue.app import create_app, publish


@pytest.fixture(scope="module")
def server() -> Iterator[LocalRedis]:
    with LocalRedis() as redis:
        yield redis


@pytest.fixture
def env(server: LocalRedis) -> Iterator[tuple[Context, Celery, StubClient]]:
    settings = make_settings(
        redis_url=server.url, poll_interval=5.0, poll_max_interval=5.0, countdown_horizon=0
    )
    client = StubClient()
    ctx = Context.from_settings(settings, client=client)  # type: ignore[arg-type]
    ctx.redis.flushall()
    celery = create_app(settings)
    ctx.outbox = Outbox(celery)
    yield ctx, celery, client
    ctx.redis.close()


def _decode(payload: str) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(payload)
    message["args"] = json.loads(base64.b64decode(message["body"]))[0]
    return message


def test_encode_builds_celerys_own_message_and_sends_nothing(
    env: tuple[Context, Celery, StubClient],
) -> None:
    ctx, celery, _ = env
    ((queue, payload),) = ctx.outbox.encode([Next(task_names.POLL, ("r1", 3), 5.0)])  # type: ignore[union-attr,misc]

    assert queue == task_names.QUEUE_POLL
    assert ctx.redis.llen(task_names.QUEUE_POLL) == 0  # captured, not pushed
    mine = _decode(payload)
    usual = _usual(celery, ctx, Next(task_names.POLL, ("r1", 3), 5.0))  # the usual way
    assert mine["headers"]["task"] == usual["headers"]["task"] == task_names.POLL
    assert mine["args"] == usual["args"] == ["r1", 3]
    assert mine["headers"]["eta"]  # a countdown message
    assert sorted(mine) == sorted(usual)
    assert sorted(mine["headers"]) == sorted(usual["headers"])
    assert sorted(mine["properties"]) == sorted(usual["properties"])
    assert mine["properties"]["delivery_info"] == usual["properties"]["delivery_info"]
    # The producer's channel publishes normally again afterwards.
    assert "_put" not in vars(celery.producer_pool.acquire().channel)


_PER_MESSAGE = ("id", "root_id", "parent_id", "eta")  # headers that differ per message


def _usual(celery: Celery, ctx: Context, step: Next) -> dict[str, Any]:
    """``step`` sent through Celery itself, read back from its queue."""
    send_step(celery, step)
    return _decode(ctx.redis.lpop(task_names.QUEUE_POLL))  # type: ignore[arg-type]


def _same_message(mine: dict[str, Any], usual: dict[str, Any]) -> None:
    """Equal but for the ids every message gets afresh; the ETA to the millisecond."""
    for key in _PER_MESSAGE:
        mine["headers"].pop(key), usual["headers"].pop(key)
    for key in ("correlation_id", "delivery_tag"):
        mine["properties"].pop(key), usual["properties"].pop(key)
    mine.pop("body"), usual.pop("body")
    assert mine == usual


@pytest.mark.parametrize("countdown", [0.0, 7.5])
def test_messages_after_the_first_are_filled_in_templates_equal_to_celerys(
    env: tuple[Context, Celery, StubClient], countdown: float
) -> None:
    ctx, celery, _ = env
    hint = ["job-1", "app", "RUNNING", 1.5, 3, 5.0, "running", 0, None, 1.0, None]
    assert ctx.outbox is not None
    ctx.outbox.encode([Next(task_names.POLL, ("r0", 1, hint), 2.0)])  # builds the template
    step = Next(task_names.POLL, ("r1", 4, hint), countdown)
    started = datetime.now(UTC)
    ((queue, payload),) = ctx.outbox.encode([step])  # type: ignore[misc]
    usual = _usual(celery, ctx, step)
    mine = _decode(payload)

    assert queue == task_names.QUEUE_POLL
    assert mine["args"] == usual["args"] == ["r1", 4, hint]
    assert mine["headers"]["argsrepr"] == usual["headers"]["argsrepr"] == "['r1', 4]"
    assert (
        mine["headers"]["id"] == mine["headers"]["root_id"] == mine["properties"]["correlation_id"]
    )
    assert mine["headers"]["parent_id"] is None
    assert mine["properties"]["delivery_tag"] != usual["properties"]["delivery_tag"]
    if countdown:
        eta = datetime.fromisoformat(mine["headers"]["eta"])
        assert started + timedelta(seconds=countdown) <= eta
        assert eta <= datetime.now(UTC) + timedelta(seconds=countdown)
        assert usual["headers"]["eta"].endswith("+00:00")
        assert mine["headers"]["eta"].endswith("+00:00")
    else:
        assert mine["headers"]["eta"] is None is usual["headers"]["eta"]
    _same_message(mine, usual)


def test_a_template_sent_from_inside_a_task_names_it_as_parent_like_celery(
    env: tuple[Context, Celery, StubClient],
) -> None:
    ctx, celery, _ = env
    assert ctx.outbox is not None
    ctx.outbox.encode([Next(task_names.POLL, ("r0", 1), 2.0)])

    @celery.task(name="test.parent")  # type: ignore[untyped-decorator]
    def parent() -> None: ...

    task = celery.tasks["test.parent"]
    task.push_request(id="task-7", root_id="root-1", called_directly=False)
    _task_stack.push(task)
    try:
        ((_, payload),) = ctx.outbox.encode([Next(task_names.POLL, ("r1", 2), 2.0)])  # type: ignore[misc]
        usual = _usual(celery, ctx, Next(task_names.POLL, ("r1", 2), 2.0))
    finally:
        _task_stack.pop()
        task.pop_request()
    mine = _decode(payload)
    assert (mine["headers"]["parent_id"], mine["headers"]["root_id"]) == ("task-7", "root-1")
    assert (usual["headers"]["parent_id"], usual["headers"]["root_id"]) == ("task-7", "root-1")


def test_poll_pushes_its_successor_in_the_compare_and_set_and_a_stale_one_pushes_nothing(
    env: tuple[Context, Celery, StubClient],
) -> None:
    ctx, _, client = env
    run_id, _ = ctx.ledger.create({"app_id": "app", "inputs": {"topic": "t"}})
    client.jobs = [job("running"), job("running"), job("running")]
    assert submit_step(ctx, run_id, 0) == []  # the first poll went out with the write
    first = _decode(ctx.redis.lpop(task_names.QUEUE_POLL))  # type: ignore[arg-type]
    assert first["args"][:2] == [run_id, 1]

    assert poll_step(ctx, run_id, *first["args"][1:]) == []
    second = _decode(ctx.redis.lpop(task_names.QUEUE_POLL))  # type: ignore[arg-type]
    assert second["args"][:2] == [run_id, 2]
    before = ctx.ledger.require(run_id)
    assert poll_step(ctx, run_id, *first["args"][1:]) == []  # a duplicate of the first: stale
    assert ctx.redis.llen(task_names.QUEUE_POLL) == 0
    assert ctx.ledger.require(run_id) == before  # its GET changed nothing


def test_a_failed_compare_and_set_pushes_nothing(env: tuple[Context, Celery, StubClient]) -> None:
    ctx, _, _ = env
    run_id, _ = ctx.ledger.create({"app_id": "app"})
    push = ctx.outbox.encode([Next(task_names.POLL, (run_id, 9), 1.0)])  # type: ignore[union-attr]
    assert push

    assert not ctx.ledger.cas(run_id, states=PRE_SUBMIT_STATES, token=5, push=push)
    assert ctx.redis.llen(task_names.QUEUE_POLL) == 0
    assert ctx.ledger.cas(run_id, states=PRE_SUBMIT_STATES, token=0, push=push)
    assert ctx.redis.llen(task_names.QUEUE_POLL) == 1


def test_without_kombus_publish_batch_hook_steps_are_published_the_usual_way(
    env: tuple[Context, Celery, StubClient],
) -> None:
    ctx, celery, _ = env
    outbox = Outbox(celery)
    outbox.enabled = False  # what an older kombu gets
    ctx.outbox = outbox
    run_id, _ = ctx.ledger.create({"app_id": "app", "inputs": {"topic": "t"}})

    (step,) = submit_step(ctx, run_id, 0)
    assert step.task == task_names.POLL
    assert ctx.redis.llen(task_names.QUEUE_POLL) == 0


def test_compare_and_set_reloads_its_script_after_redis_forgot_it(
    env: tuple[Context, Celery, StubClient],
) -> None:
    ctx, _, _ = env
    run_id, _ = ctx.ledger.create({"app_id": "app"})
    ctx.redis.script_flush()  # what a restarted Redis looks like

    assert ctx.ledger.cas(run_id, states=PRE_SUBMIT_STATES, token=0, fields={"x": 1})
    assert ctx.ledger.require(run_id)["x"] == "1"


def test_a_claim_reads_another_hash_field_in_the_same_round_trip_even_after_a_flush(
    env: tuple[Context, Celery, StubClient],
) -> None:
    ctx, _, _ = env
    run_id, _ = ctx.ledger.create({"app_id": "app"})
    ctx.redis.hset("elsewhere", "state", "open")
    ctx.redis.script_flush()  # what a restarted Redis looks like

    claimed = ctx.ledger.claim_peeking(
        run_id, 0, PRE_SUBMIT_STATES, 30.0, peek=("elsewhere", "state")
    )
    stale = ctx.ledger.claim_peeking(run_id, 0, PRE_SUBMIT_STATES, 30.0, peek=("nothing", "x"))

    assert claimed.record is not None
    assert claimed.record.token == 1
    assert claimed.peeked == "open"
    assert not stale  # the token moved on: a stale claim still reports its peek
    assert stale.peeked is None


def test_the_dispatcher_publishes_a_tick_in_one_batch_of_ordinary_messages(
    env: tuple[Context, Celery, StubClient],
) -> None:
    ctx, celery, _ = env
    steps = [Next(task_names.POLL, (f"r{i}", i), 2.0) for i in range(3)]

    publish_batched(celery, steps)

    messages = [_decode(str(m)) for m in ctx.redis.lrange(task_names.QUEUE_POLL, 0, -1)]
    assert sorted(m["args"][0] for m in messages) == ["r0", "r1", "r2"]
    assert all(m["headers"]["eta"] for m in messages)


def test_with_an_outbox_the_dispatcher_pushes_celerys_messages_in_one_pipeline(
    env: tuple[Context, Celery, StubClient],
) -> None:
    ctx, celery, _ = env
    steps = [Next(task_names.POLL, (f"r{i}", i, ["job", None]), 2.0) for i in range(3)]

    publish_batched(celery, steps, outbox=Outbox(celery), redis=ctx.redis)

    messages = [_decode(str(m)) for m in ctx.redis.lrange(task_names.QUEUE_POLL, 0, -1)]
    assert sorted(m["args"][:2] for m in messages) == [["r0", 0], ["r1", 1], ["r2", 2]]
    assert all(m["headers"]["eta"] for m in messages)
    assert len({m["headers"]["id"] for m in messages}) == 3
    ctx.redis.delete(task_names.QUEUE_POLL)
    usual = _usual(celery, ctx, steps[0])
    _same_message(messages[-1], usual)  # the first step's, built through Celery


def test_publishing_a_step_never_subscribes_to_its_result(
    env: tuple[Context, Celery, StubClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, celery, _ = env
    subscribed: list[Any] = []
    monkeypatch.setattr(celery.backend, "on_task_call", lambda *a, **k: subscribed.append(a))
    assert ctx.outbox is not None

    publish([Next(task_names.POLL, ("r1", 1), 0.0)], celery)  # the usual way
    publish_batched(celery, [Next(task_names.POLL, ("r2", 1), 1.0)])  # the dispatcher's
    assert ctx.outbox.encode([Next(task_names.POLL, ("r3", 1), 1.0)])  # the outbox's first

    assert subscribed == []  # no task of ours stores a result: none is waited for
    assert ctx.redis.llen(task_names.QUEUE_POLL) == 2
    headers = [_decode(str(m))["headers"] for m in ctx.redis.lrange(task_names.QUEUE_POLL, 0, -1)]
    assert all(h["ignore_result"] is True for h in headers)
