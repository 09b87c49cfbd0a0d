"""The web console's parts on fakeredis: the runs table's pages, search, sessions, the
timeline, the poll log, chart samples, state counts and dead letters (run and batch)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

from worker.api import operations
from worker.clients import ClientStore
from worker.console import charts, queries
from worker.console.pages import _time as read_time
from worker.console.queries import RunFilter
from worker.console.sessions import SessionStore
from worker.console.timeline import timeline
from worker.context import Context
from worker.errors import CallbackReplayError
from worker.store.ledger import Run
from worker.store.poll_log import POLL_LOG_SIZE, poll_log_field, read_poll_log
from worker.webhooks.batch_delivery import replay_batch_callback


class Clock:
    """A clock the test moves."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ctx(context_factory: Callable[..., Context]) -> Context:
    context = context_factory()
    context.ledger.clock = Clock()
    return context


def make_runs(ctx: Context, n: int, **fields: Any) -> list[str]:
    """``n`` runs one second apart (oldest first); ``client`` indexes them for that client."""
    clock = ctx.ledger.clock
    made = []
    for _ in range(n):
        clock.now += 1
        client = fields.get("client")
        run_id, _created = ctx.ledger.create(
            {"app_id": "app-1", "inputs": {}, **fields},
            indexed_in=ctx.keys.client_runs(client) if client else "",
        )
        made.append(run_id)
    return made


def test_pages_cover_every_run_once_newest_first(ctx: Context) -> None:
    made = make_runs(ctx, 120)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = queries.runs_page(ctx, RunFilter(), limit=50, cursor=cursor)
        seen += [r["run_id"] for r in page.rows]
        if len(page.rows) < 50:
            break
        cursor = page.next_cursor
    assert seen == made[::-1]


def test_filters_by_state_app_client_and_time(ctx: Context) -> None:
    old = make_runs(ctx, 5)
    cut = ctx.ledger.clock.now + 0.5
    mine = make_runs(ctx, 3, client="alice")
    other_app = make_runs(ctx, 2, app_id="app-2")
    ctx.redis.hset(ctx.keys.run(old[0]), "state", "FAILED")

    def ids(filters: RunFilter) -> list[str]:
        return [r["run_id"] for r in queries.runs_page(ctx, filters).rows]

    assert ids(RunFilter(state="FAILED")) == [old[0]]
    assert ids(RunFilter(app_id="app-2")) == other_app[::-1]
    assert ids(RunFilter(client="alice")) == mine[::-1]
    assert ids(RunFilter(since=cut)) == (mine + other_app)[::-1]
    assert ids(RunFilter(until=cut)) == old[::-1]
    assert ids(RunFilter(since=cut, until=cut + 3)) == mine[::-1]


def test_a_rare_filter_gives_a_short_page_with_a_cursor_to_go_on(ctx: Context) -> None:
    made = make_runs(ctx, 30)
    ctx.redis.hset(ctx.keys.run(made[0]), "state", "FAILED")

    first = queries.runs_page(ctx, RunFilter(state="FAILED"), limit=5, max_scan=10)
    assert first.rows == []
    assert first.scanned == 10
    assert first.more
    rest = queries.runs_page(ctx, RunFilter(state="FAILED"), limit=5, cursor=first.next_cursor)
    assert [r["run_id"] for r in rest.rows] == [made[0]]
    assert not rest.more


def test_a_cursor_that_is_not_ours_starts_from_the_newest(ctx: Context) -> None:
    made = make_runs(ctx, 3)
    page = queries.runs_page(ctx, RunFilter(), cursor="not a cursor!")
    assert [r["run_id"] for r in page.rows] == made[::-1]


def test_search_finds_a_run_by_id_or_job_id(ctx: Context) -> None:
    made = make_runs(ctx, 50)
    ctx.redis.hset(ctx.keys.run(made[10]), "job_id", "job-xyz")

    assert queries.find_run(ctx, made[3]) == made[3]
    assert queries.find_run(ctx, " job-xyz ") == made[10]
    assert queries.find_run(ctx, "nothing") is None
    assert queries.find_run(ctx, "") is None


def test_a_session_lives_until_logout_or_the_token_is_revoked(
    fake_redis: fakeredis.FakeRedis, ctx: Context
) -> None:
    clients = ClientStore(fake_redis, ctx.keys)
    token = clients.create("ops", admin=True)
    store = SessionStore(fake_redis, ctx.keys)

    first = store.create("ops", token)
    second = store.create("ops", token)
    session = store.get(first)
    assert session is not None
    assert session.client == "ops"
    assert session.csrf_ok(session.csrf)
    assert not session.csrf_ok("")
    assert not session.csrf_ok(session.csrf + "x")
    stored = [fake_redis.hgetall(k) for k in fake_redis.keys("*console-session*")]
    assert len(stored) == 2
    assert first not in json.dumps([fake_redis.keys("*"), stored])  # only its hash is kept

    store.delete(first)
    assert store.get(first) is None
    assert store.get(second) is not None
    clients.revoke("ops")
    assert store.get(second) is None
    assert store.get(None) is None
    assert store.get("x" * 500) is None


def test_the_poll_log_keeps_the_last_polls_in_order() -> None:
    record: dict[str, Any] = {}
    for n in range(1, POLL_LOG_SIZE + 6):
        record.update(poll_log_field(n, 1000.0 + n, "running|odd", 0.5 if n % 2 else None))
    record["poll_log:3"] = "garbage"

    entries = read_poll_log(record)

    numbers = [e.number for e in entries]
    assert numbers == sorted(numbers)
    assert numbers[-1] == POLL_LOG_SIZE + 5
    assert len(entries) == POLL_LOG_SIZE - 1  # the garbage one is skipped
    assert entries[-1].status == "running/odd"
    assert {e.lateness for e in entries} == {0.5, None}


def test_the_timeline_tells_what_the_record_keeps_and_no_signature() -> None:
    record: dict[str, Any] = {
        "run_id": "r1",
        "state": "COMPLETED",
        "queued_at": 10.0,
        "submitted_at": 11.0,
        "completed_at": 14.0,
        "updated_at": 14.0,
        "job_id": "job-1",
        "documents": {
            "s1": {
                "url": "https://bucket.example/doc.pdf?X-Amz-Signature=abc&X-Amz-Credential=k",
                "expires_at": 3614.0,
            }
        },
        "callback_attempts": [
            {"at": 15.0, "event": "workflow_run.completed", "status": 500, "latency_ms": 12.5},
            {"at": 16.0, "event": "workflow_run.completed", "status": 200, "latency_ms": 3.0},
        ],
        **poll_log_field(1, 12.0, "running", 0.25),
        **poll_log_field(2, 13.0, "complete", 0.1),
    }

    events = timeline(Run(record))

    titles = [e.title for e in events]
    assert titles[:4] == ["QUEUED", "SUBMITTED", "poll #1: running", "poll #2: complete"]
    assert "callback workflow_run.completed: HTTP 500" in titles
    text = json.dumps([e.__dict__ for e in events], ensure_ascii=False)
    assert "Signature" not in text
    assert "Credential" not in text
    assert "https://bucket.example/… (expires 1970-01-01 01:00:14)" in text
    assert "0.250 s late" in text
    assert "12.5 ms" in text


def test_chart_samples_are_taken_once_per_interval(ctx: Context) -> None:
    clock = itertools.count(1000, 30)
    ctx.clock = lambda: float(next(clock))
    ctx.redis.hset(ctx.keys.metrics, mapping={"state|QUEUED": 2, "api|status|ok": 5})

    assert charts.take_sample(ctx) is True
    assert charts.take_sample(ctx) is False  # the lease holds for the interval
    ctx.redis.delete(ctx.keys.lease("console-sample"))
    ctx.redis.hset(
        ctx.keys.metrics,
        mapping={"state|QUEUED": 8, "state|COMPLETED": 3, "api|status|ok": 20,
                 "lateness|sum": 1.5, "lateness|count": 3},
    )  # fmt: skip
    assert charts.take_sample(ctx) is True

    made = charts.charts(charts.read_samples(ctx))
    runs, lateness, api = made
    assert runs.series["QUEUED"] == [(1030.0, 12.0)]  # 6 in 30 s: 12 a minute
    assert runs.series["COMPLETED"] == [(1030.0, 6.0)]
    assert lateness.series["mean lateness"] == [(1030.0, 0.5)]
    assert api.series["API calls"] == [(1030.0, 30.0)]
    assert "not enough samples" in charts.svg(runs)
    two = charts.Chart("a <b>", "x", {"<s>": [(1.0, 1.0), (2.0, 3.0)]})
    drawn = str(charts.svg(two))
    assert "<polyline" in drawn
    assert "<b>" not in drawn
    assert "&lt;s&gt;" in drawn


def test_state_counts_read_the_schedule_and_the_counters(ctx: Context) -> None:
    made = make_runs(ctx, 3)
    ctx.redis.hset(ctx.keys.run(made[0]), "state", "RUNNING")
    ctx.redis.hset(ctx.keys.metrics, "state|COMPLETED", 7)

    counts = operations.state_counts(context=ctx)

    assert counts["QUEUED"] == 2
    assert counts["RUNNING"] == 1
    assert counts["COMPLETED"] == 7
    assert counts["FAILED"] == 0


def test_a_failed_batch_callback_is_a_dead_letter_and_replays_once(ctx: Context) -> None:
    key = ctx.keys.batch("b1")
    ctx.redis.hset(
        key,
        mapping={
            "batch_id": "b1",
            "callback_url": "https://hooks.example/b?token=secret",
            "callback_state": "failed",
            "callback_token": "3",
            "callback_attempts": json.dumps([{"at": 5.0, "status": 500}]),
            "callback_error": "500",
            "created_at": "1.0",
        },
    )
    ctx.redis.zadd(ctx.keys.batches, {"b1": 1.0})
    ctx.redis.zadd(ctx.keys.failed_batch_callbacks, {"b1": 5.0})  # as a dead letter is listed

    letters = operations.dead_letters(context=ctx)

    assert [(d.kind, d.id, d.url, d.error) for d in letters] == [
        ("batch", "b1", "https://hooks.example/b", "500")
    ]
    steps = replay_batch_callback(ctx, "b1")
    assert [(s.args if hasattr(s, "args") else None) for s in steps] == [("b1", 4)]
    assert ctx.redis.hget(key, "callback_state") == "pending"
    assert operations.dead_letters(context=ctx) == []
    outcome = operations.callback_outcome("batch", "b1", context=ctx)
    assert (outcome.state, outcome.last_attempt, outcome.settled) == (
        "pending",
        {"at": 5.0, "status": 500},
        False,
    )
    assert operations.callback_outcome("run", "gone", context=ctx).settled
    with pytest.raises(CallbackReplayError, match="not dead-lettered"):
        replay_batch_callback(ctx, "b1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-11-14T22:13", 1_700_000_000 - 20),
        ("2023-11-15T00:13:20+02:00", 1_700_000_000),
        ("", None),
        ("yesterday", None),
    ],
)
def test_time_filters_read_utc_unless_told(text: str, expected: float | None) -> None:
    assert read_time(text) == expected
