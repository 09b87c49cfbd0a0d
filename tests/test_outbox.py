"""The transactional outbox: messages built by Celery/kombu, pushed by the ledger's
compare-and-set only when it succeeds. A private redis-server (kombu's Redis
transport needs a real one)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from tests.conftest import make_settings
from tests.test_pipeline_unit import StubClient, job
from worker import task_names
from worker.celery_app import create_app
from worker.context import Context
from worker.dispatcher import publish_batched
from worker.ledger import PRE_SUBMIT_STATES, RunState
from worker.local_stack import LocalRedis
from worker.outbox import Outbox
from worker.pipeline import Next, poll_step, submit_step


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
    celery.send_task(task_names.POLL, args=["r1", 3], countdown=5.0)  # the usual way
    usual = _decode(ctx.redis.lpop(task_names.QUEUE_POLL))  # type: ignore[arg-type]
    assert mine["headers"]["task"] == usual["headers"]["task"] == task_names.POLL
    assert mine["args"] == usual["args"] == ["r1", 3]
    assert mine["headers"]["eta"]  # a countdown message
    assert sorted(mine) == sorted(usual)
    assert sorted(mine["headers"]) == sorted(usual["headers"])
    assert sorted(mine["properties"]) == sorted(usual["properties"])
    assert mine["properties"]["delivery_info"] == usual["properties"]["delivery_info"]
    # The producer's channel publishes normally again afterwards.
    assert "_put" not in vars(celery.producer_pool.acquire().channel)


def test_poll_pushes_its_successor_in_the_compare_and_set_and_a_stale_one_pushes_nothing(
    env: tuple[Context, Celery, StubClient],
) -> None:
    ctx, _, client = env
    run_id, _ = ctx.ledger.create({"app_id": "app", "inputs": {"topic": "t"}})
    client.jobs = [job("running"), job("running")]
    assert submit_step(ctx, run_id, 0) == []  # the first poll went out with the write
    first = _decode(ctx.redis.lpop(task_names.QUEUE_POLL))  # type: ignore[arg-type]
    assert first["args"] == [run_id, 1]

    assert poll_step(ctx, run_id, 1) == []
    second = _decode(ctx.redis.lpop(task_names.QUEUE_POLL))  # type: ignore[arg-type]
    assert second["args"] == [run_id, 2]
    assert poll_step(ctx, run_id, 1) == []  # a duplicate of the first poll: stale
    assert ctx.redis.llen(task_names.QUEUE_POLL) == 0
    assert ctx.ledger.require(run_id).state is RunState.RUNNING


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


def test_the_dispatcher_publishes_a_tick_in_one_batch_of_ordinary_messages(
    env: tuple[Context, Celery, StubClient],
) -> None:
    ctx, celery, _ = env
    steps = [Next(task_names.POLL, (f"r{i}", i), 2.0) for i in range(3)]

    publish_batched(celery, steps)

    messages = [_decode(str(m)) for m in ctx.redis.lrange(task_names.QUEUE_POLL, 0, -1)]
    assert sorted(m["args"][0] for m in messages) == ["r0", "r1", "r2"]
    assert all(m["headers"]["eta"] for m in messages)
