"""Learned poll schedules end to end: a private redis-server, a real `celery worker`
and the fake Hatz server over HTTP. Status calls are counted by the fake."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.stack import Stack, running_stack
from worker.local.stack import wait_until
from worker.runs.poll_plan import MIN_HISTORY, Window
from worker.store.durations import recent_durations
from worker.store.ledger import RunState

pytestmark = pytest.mark.integration

DURATION = 5.0
# Today's schedule at these settings polls every second: 6 status calls for a 5 s job.
WORKER_SETTINGS: dict[str, Any] = {
    "poll_initial_delay": 0.2,
    "poll_interval": 1.0,
    "poll_max_interval": 10.0,  # the longest countdown: the jump to the window is one hop
    "poll_backoff": 1.0,
    "poll_jitter": 0.1,
    "poll_target_latency": 0.25,
    "app_cache_ttl": 0,
    "callback_allow_private": True,
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(values=WORKER_SETTINGS) as s:
        yield s


def status_calls(stack: Stack, job_id: str) -> int:
    return len([c for c in stack.calls("status") if c["job_id"] == job_id])


def test_a_run_of_a_stable_app_finishes_with_few_polls_once_it_has_history(
    stack: Stack,
) -> None:
    # Given a stable app whose first runs were polled on today's schedule
    app = stack.app(duration=DURATION, pending_seconds=0.0)
    first = [stack.wait(r) for r in [stack.enqueue(app.id) for _ in range(MIN_HISTORY + 1)]]
    assert all(run.state is RunState.COMPLETED for run in first)
    assert min(status_calls(stack, run["job_id"]) for run in first) >= 6
    # A duration is recorded just after its run shows COMPLETED: wait for the last one.
    wait_until(
        lambda: (
            len(recent_durations(stack.context.redis, stack.context.keys, app.id))
            >= MIN_HISTORY + 1
        ),
        timeout=10,
        message="every first run's duration",
    )
    history = recent_durations(stack.context.redis, stack.context.keys, app.id)
    assert len(history) == MIN_HISTORY + 1
    assert all(abs(d.to_complete - DURATION) < 0.01 for d in history)  # by the API's clock
    stack.restart_worker()  # plans are cached per process; a fresh one reads the history

    # When the next run goes
    run = stack.wait(stack.enqueue(app.id))

    # Then it is polled once early and then at its predicted completion: few calls
    assert run.state is RunState.COMPLETED
    window = Window.decode(run.get("poll_window"))
    assert window is not None
    assert window.start == pytest.approx(DURATION, abs=0.01)
    assert status_calls(stack, run["job_id"]) <= 2  # today: 6
