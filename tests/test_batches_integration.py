"""Batches and schedules end to end: a private redis-server, a real `celery worker` (and
`celery beat`), the fake Hatz server over HTTP. Concurrency and counts are read from the
fake's call log and the callback receiver, not from our own ledger."""

from __future__ import annotations

import csv
import itertools
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks

from tests.conftest import API_KEY
from tests.stack import Stack, running_stack
from worker import task_names
from worker.api.batches import batch_results, enqueue_batch, wait_for_batch
from worker.batches.records import list_batches
from worker.batches.schedules import schedule_state
from worker.cli.main import main
from worker.fake_hatz import FakeInput, FakeStep
from worker.limits import breaker
from worker.local.stack import CeleryProcess, wait_until
from worker.store.outbox import Next
from worker.taskqueue.app import publish

pytestmark = pytest.mark.integration

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SCHEDULED_APP = "5c4e4ad4-9a43-4c55-9d6f-7a3a0c3a1b11"
EVERY = 3.0
SCHEDULES = [
    {"name": "tick", "every": EVERY, "app_id": SCHEDULED_APP, "inputs": {"topic": "tides"}}
]
WORKER_SETTINGS: dict[str, Any] = {
    "poll_initial_delay": 0.2,
    "poll_interval": 0.2,
    "poll_max_interval": 0.5,
    "poll_backoff": 1.0,
    "poll_jitter": 0.1,
    "overage_pause": 0.5,
    "breaker_max_backoff": 1.0,
    "http_read_timeout": 2.0,
    "http_retries": 1,
    "http_retry_base_delay": 0.05,
    "http_retry_max_delay": 0.2,
    "app_cache_ttl": 30,
    "webhook_secret": SECRET,
    "callback_allow_private": True,
    "callback_retry_delays": "0,0.2,0.5",
    "sweep_interval": 1.0,
    "sweep_grace": 5.0,
    "schedules": json.dumps(SCHEDULES),
}


class BatchStack(Stack):
    def batch_deliveries(self, batch_id: str) -> list[dict[str, Any]]:
        out = []
        for delivery in self.receiver.successful():
            body = json.loads(delivery["body"])  # type: ignore[arg-type]
            if body.get("type") == "batch.completed" and body["data"]["batch_id"] == batch_id:
                out.append(delivery)
        return out

    def calls(self, endpoint: str, app_id: str | None = None) -> list[dict[str, Any]]:
        return [c for c in self.fake.calls(endpoint=endpoint) if c.get("app_id") == app_id]


APP_DEFAULTS: dict[str, Any] = {
    "name": "batch app",
    "duration": 0.3,
    "pending_seconds": 0.05,
    "user_inputs": [FakeInput("topic", required=True)],
    "steps": [FakeStep(output_type="dump"), FakeStep(output_type="document")],
}


@pytest.fixture(scope="module")
def stack() -> Iterator[BatchStack]:
    with running_stack(
        BatchStack, values=WORKER_SETTINGS, concurrency=4, app_defaults=APP_DEFAULTS
    ) as s:
        assert isinstance(s, BatchStack)
        yield s


def topics_csv(path: Path, rows: int) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["topic"])
        writer.writerows([f"topic {i}"] for i in range(rows))
    return path


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at once; an interval ending exactly when another starts is closed."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def test_a_200_row_batch_never_exceeds_max_in_flight_and_calls_back_once(
    stack: BatchStack, tmp_path: Path
) -> None:
    # Given a 200-row CSV and a batch limited to 10 runs in flight
    app = stack.app()
    source = topics_csv(tmp_path / "topics.csv", 200)

    # When the batch runs to the end
    batch_id = enqueue_batch(
        app.id,
        source,
        max_in_flight=10,
        callback_url=stack.receiver.url,
        context=stack.context,
        celery=stack.celery,
    )
    status = wait_for_batch(batch_id, timeout=100, interval=0.2, context=stack.context)

    # Then every row completed, each submitted exactly once
    assert status.counts["completed"] == 200, status.counts
    assert status.counts["failed"] == 0
    submits = [c for c in stack.calls("run", app.id) if c["status"] == 200]
    assert len(submits) == 200
    # ...never more than 10 at once: from each job's submit to our last poll of it,
    # and (weaker) from its creation to its completion at the fake.
    polls: dict[str, float] = {}
    for call in stack.calls("status", app.id):
        polls[call["job_id"]] = max(polls.get(call["job_id"], 0.0), call["ts"])
    ours = [(c["ts"], polls[c["job_id"]]) for c in submits]
    jobs = stack.fake.stats()["jobs"]
    theirs = [
        (jobs[c["job_id"]]["created_at"], jobs[c["job_id"]]["first_complete_at"]) for c in submits
    ]
    assert max_overlap(ours) <= 10
    assert max_overlap(theirs) <= 10
    assert max_overlap(ours) >= 5  # it did run concurrently
    # ...one signed batch callback with the counts
    wait_until(lambda: stack.batch_deliveries(batch_id), timeout=10, message="batch callback")
    (delivery,) = stack.batch_deliveries(batch_id)
    event = standardwebhooks.Webhook(SECRET).verify(delivery["body"], delivery["headers"])
    assert event["data"]["counts"]["completed"] == 200
    assert event["data"]["failures"] == []
    # ...and one result line per row, in row order, with its document URL
    out = tmp_path / "results.csv"
    assert batch_results(batch_id, out, context=stack.context) == 200
    with out.open() as handle:
        lines = list(csv.DictReader(handle))
    assert [int(r["row"]) for r in lines] == list(range(2, 202))
    assert {r["status"] for r in lines} == {"COMPLETED"}
    assert all(json.loads(r["documents"]) for r in lines)


def test_a_credit_overage_mid_batch_pauses_submits_and_loses_nothing(
    stack: BatchStack, tmp_path: Path
) -> None:
    # Given a batch under way
    app = stack.app()
    batch_id = enqueue_batch(
        app.id,
        topics_csv(tmp_path / "topics.csv", 40),
        max_in_flight=5,
        context=stack.context,
        celery=stack.celery,
    )
    wait_until(
        lambda: len([c for c in stack.calls("run", app.id) if c["status"] == 200]) >= 10,
        timeout=30,
        message="ten submits",
    )

    # When the organisation runs into a credit overage for a while
    stack.fake.set_overage(True)
    try:
        wait_until(
            lambda: breaker.breaker_state(stack.context)["state"] == "open",
            timeout=15,
            message="the breaker to open",
        )
        wait_until(
            lambda: breaker.breaker_state(stack.context).get("probes", 0) >= 2,
            timeout=15,
            message="two probes",
        )
        refused = [c for c in stack.calls("run", app.id) if c["status"] == 429]
        accepted_during = len([c for c in stack.calls("run", app.id) if c["status"] == 200])
    finally:
        stack.fake.set_overage(False)
    status = wait_for_batch(batch_id, timeout=60, interval=0.2, context=stack.context)

    # Then submits paused (the in-flight ones plus one probe at a time were refused),
    # the batch completed, every row submitted once and none counted failed
    assert len(refused) <= 5 + int(breaker.breaker_state(stack.context)["probes"])
    assert accepted_during < 40
    assert status.counts["completed"] == 40, status.counts
    assert status.counts["failed"] == 0
    assert len([c for c in stack.calls("run", app.id) if c["status"] == 200]) == 40
    assert breaker.breaker_state(stack.context)["state"] == "closed"


def test_bad_rows_are_reported_with_row_numbers_and_nothing_is_submitted(
    stack: BatchStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = stack.app()
    source = tmp_path / "rows.csv"
    source.write_text("topic,colour\nfine,\n,red\n")
    before = stack.context.ledger.run_ids(limit=100_000)

    code = main(
        ["batch", "run", str(source), "--app", app.id],
        context=stack.context,
        celery=stack.celery,
    )

    assert code == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "row " in ln]
    assert line.startswith("hatz-worker: row 3: ")
    assert "missing required input 'topic'" in line
    assert "unknown input 'colour'" in line
    assert stack.calls("run", app.id) == []
    assert stack.context.ledger.run_ids(limit=100_000) == before


def test_a_schedule_fires_on_its_interval_and_not_twice_across_a_beat_restart(
    stack: BatchStack,
) -> None:
    stack.app(id=SCHEDULED_APP)
    key = stack.context.keys.schedule_state("tick")
    beat_settings = {**stack.values, "api_key": API_KEY}
    first = CeleryProcess(beat_settings, kind="beat")
    first.start()
    try:
        first.wait_ready()
        wait_until(
            lambda: int(stack.context.redis.hget(key, "count_fired") or 0) >= 1,
            timeout=20,
            message="the first firing",
        )
    finally:
        first.signal(signal.SIGKILL)  # no clean shutdown: beat's own state may be stale
        first.stop()
    # A second beat on the same schedule file, like a restarted one
    second = CeleryProcess(beat_settings, kind="beat", log_path=first.log_path)
    second.start()
    try:
        second.wait_ready()
        wait_until(
            lambda: int(stack.context.redis.hget(key, "count_fired") or 0) >= 3,
            timeout=30,
            message="three firings",
        )
        # ...and a duplicate message for the same slot, as a second beat would send
        publish([Next(task_names.FIRE_SCHEDULE, ("tick",))], stack.celery)
        wait_until(
            lambda: int(stack.context.redis.hget(key, "count_duplicate") or 0) >= 1,
            timeout=10,
            message="the duplicate to be refused",
        )
    finally:
        second.stop()

    fired = sorted(
        float(b["created_at"])
        for b in list_batches(stack.context, limit=1000)
        if b["schedule"] == "tick"
    )
    state = schedule_state(stack.context, "tick")
    assert len(fired) == int(state["count_fired"])
    gaps = [b - a for a, b in itertools.pairwise(fired)]
    assert min(gaps) >= EVERY * 0.8 - 0.1, gaps
