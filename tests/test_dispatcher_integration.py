"""Parked polls end to end: a private redis-server, a real `celery worker` whose
dispatcher publishes them, and the fake Hatz server over HTTP. Poll times come
from the fake's call log."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.stack import Stack, assert_spaced, running_stack
from worker import task_names
from worker.local.stack import wait_until
from worker.store.ledger import RunState

pytestmark = pytest.mark.integration

INTERVAL = 0.8
HORIZON = 0.4  # every poll after the first is further off: parked, then dispatched
SETTINGS: dict[str, Any] = {
    "poll_initial_delay": 0.2,
    "poll_interval": INTERVAL,
    "poll_max_interval": INTERVAL,
    "poll_backoff": 1.0,
    "poll_jitter": 0.1,
    "countdown_horizon": HORIZON,
    "app_cache_ttl": 0,
    "http_read_timeout": 2.0,
    "http_retries": 1,
    "sweep_grace": 60.0,  # the sweeper must not be what gets these runs done
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(values=SETTINGS) as s:
        yield s


def test_parked_polls_run_on_time_and_no_message_waits_meanwhile(stack: Stack) -> None:
    app = stack.app(duration=4.0, pending_seconds=0.0)
    run_id = stack.enqueue(app.id)
    r = stack.context.redis

    # While parked, the run's next poll is a zset entry, not a Celery message.
    def parked_with_nothing_queued() -> bool:
        return (
            r.zscore(stack.context.keys.parked, run_id) is not None
            and r.llen(task_names.QUEUE_POLL) == 0
            and r.hlen("unacked") == 0
        )

    wait_until(parked_with_nothing_queued, timeout=10, interval=0.01, message="a parked run")
    run = stack.wait(run_id)

    gaps = stack.poll_gaps(app.id)
    assert run.state is RunState.COMPLETED
    assert len(gaps) >= 4
    # The dispatcher hands each parked poll over as a countdown: the same spacing.
    assert_spaced(gaps, INTERVAL)
    assert r.zcard(stack.context.keys.parked) == 0  # nothing left behind


def test_parked_runs_survive_a_worker_sigkill_and_finish_after_restart(stack: Stack) -> None:
    app = stack.app(duration=5.0, pending_seconds=0.0)
    run_ids = [stack.enqueue(app.id) for _ in range(6)]
    parked = stack.context.keys.parked
    r = stack.context.redis
    wait_until(
        lambda: all(r.zscore(parked, run_id) is not None for run_id in run_ids),
        timeout=10,
        interval=0.01,
        message="every run parked",
    )

    stack.worker.kill()
    stack.restart_worker()

    runs = [stack.wait(run_id, timeout=30) for run_id in run_ids]
    assert [run.state for run in runs] == [RunState.COMPLETED] * 6
    assert all(int(run.get("sweeper_rearms") or 0) == 0 for run in runs)  # the dispatcher did it
    assert len(stack.calls("run", app.id)) == 6
