"""Batches, schedules, the breaker and the API budget as plain functions on fakeredis."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from tests.conftest import make_settings
from worker import task_names
from worker.batches.abandon import CREATING_GRACE
from worker.batches.create import create_batch
from worker.batches.records import row_run_ids
from worker.batches.request import BatchRequest
from worker.batches.schedules import fire, load_schedules, parse_schedules
from worker.batches.sources import read_source
from worker.batches.status import batch_status
from worker.batches.tick import sweep_batches, tick
from worker.context import Context
from worker.errors import HatzBudgetError, HatzNotFoundError, InvalidBatchError, ScheduleError
from worker.hatz.types import App, SubmittedJob, UserInput
from worker.limits import breaker
from worker.limits.budget import ApiBudget
from worker.runs.submit import submit_step
from worker.store.ledger import RunState
from worker.store.outbox import Next
from worker.webhooks.batch_delivery import deliver_batch_callback

APP = App(
    id="app",
    user_inputs=[
        UserInput(variable_name="topic", required=True),
        UserInput(variable_name="style"),
        UserInput(variable_name="doc", variable_type="file_upload"),
    ],
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class StubClient:
    def __init__(self) -> None:
        self.runs: list[Any] = []
        self.calls: list[str] = []

    def get_app(self, app_id: str) -> App:
        if app_id != "app":
            raise HatzNotFoundError(404, "App not found")
        return APP

    def run_workflow(self, app_id: str, inputs: dict[str, Any], **_: Any) -> SubmittedJob:
        self.calls.append("run")
        answer = self.runs.pop(0) if self.runs else SubmittedJob(job_id="job-1")
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        pass


Harness = tuple[Context, StubClient, Clock]


@pytest.fixture
def harness(fake_redis: fakeredis.FakeRedis) -> Callable[..., Harness]:
    def build(**overrides: Any) -> Harness:
        clock, client = Clock(), StubClient()
        ctx = Context.from_settings(
            make_settings(**overrides),
            redis_client=fake_redis,
            client=client,  # type: ignore[arg-type]
            clock=clock,
        )
        return ctx, client, clock

    return build


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def end_run(ctx: Context, run_id: str, to: RunState = RunState.COMPLETED) -> None:
    assert ctx.ledger.cas(run_id, states=None, to=to)


def submits(steps: list[Next]) -> list[str]:
    return [str(s.args[0]) for s in steps if s.task == task_names.SUBMIT]


# --- sources and validation -----------------------------------------------------------------


def test_csv_rows_map_columns_to_inputs_and_resolve_file_paths(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    source = write_csv(tmp_path / "rows.csv", ["topic,style,doc", "tides,,a.txt", "moons,brief,"])

    rows, bad = read_source(source, inputs={"style": "plain"}, file_input="doc")

    assert bad == []
    assert [r.number for r in rows] == [2, 3]  # spreadsheet rows: the header is row 1
    assert rows[0].inputs == {"topic": "tides", "style": "plain"}
    assert rows[0].files == {"doc": str(tmp_path / "a.txt")}
    assert rows[1].inputs == {"topic": "moons", "style": "brief"}


def test_jsonl_lines_that_are_not_objects_are_bad_rows_with_their_numbers(tmp_path: Path) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_text('{"topic": "a"}\n\nnot json\n[1]\n{"topic": "b"}\n')

    rows, bad = read_source(source)

    assert [r.number for r in rows] == [1, 5]  # line numbers
    assert [(b.number, b.problems[0][:8]) for b in bad] == [(3, "not JSON"), (4, "not a JS")]


def test_a_folder_gives_one_row_per_file(tmp_path: Path) -> None:
    for name in ("b.pdf", "a.pdf", ".hidden"):
        (tmp_path / name).write_text(name)

    rows, _ = read_source(tmp_path, inputs={"topic": "x"}, file_input="doc")

    assert [Path(r.files["doc"]).name for r in rows] == ["a.pdf", "b.pdf"]
    assert all(r.inputs == {"topic": "x"} for r in rows)


def test_bad_rows_abort_the_batch_with_row_numbers_and_create_nothing(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    ctx, _, _ = harness()
    source = write_csv(
        tmp_path / "rows.csv",
        ["topic,colour,doc", "ok,,", ",red,", "fine,,missing.pdf"],
    )

    with pytest.raises(InvalidBatchError) as caught:
        create_batch(ctx, BatchRequest("app", source, file_input="doc"))

    problems = caught.value.problems
    assert problems[0].startswith("row 3: ")
    assert "missing required input 'topic'" in problems[0]
    assert "unknown input 'colour'" in problems[0]
    assert problems[1].startswith("row 4: file for input 'doc' not found")
    assert ctx.ledger.run_ids() == []


def test_bad_rows_can_be_skipped_and_are_recorded(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    ctx, _, _ = harness()
    source = write_csv(tmp_path / "rows.csv", ["topic,style", "a,", ",x", "c,"])

    batch_id, _ = create_batch(ctx, BatchRequest("app", source, on_bad_rows="skip"))

    status = batch_status(ctx, batch_id)
    assert status.counts["total"] == 2
    assert status.record["skipped"] == 1
    assert status.record["bad_rows"][0]["row"] == 3


def test_unknown_app_is_refused_before_anything_is_created(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    ctx, _, _ = harness()

    with pytest.raises(InvalidBatchError, match="unknown app_id"):
        create_batch(ctx, BatchRequest("nope", write_csv(tmp_path / "r.csv", ["topic", "a"])))


# --- concurrency ------------------------------------------------------------------------------


def make_batch(
    ctx: Context, tmp_path: Path, rows: int, limit: int, **kw: Any
) -> tuple[str, list[Next]]:
    source = write_csv(tmp_path / "rows.csv", ["topic", *[f"t{i}" for i in range(rows)]])
    return create_batch(ctx, BatchRequest("app", source, max_in_flight=limit, **kw))


def test_only_max_in_flight_runs_are_released_and_the_rest_are_held(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    ctx, _, clock = harness()

    batch_id, steps = make_batch(ctx, tmp_path, rows=7, limit=3)

    assert len(submits(steps)) == 3
    run_ids = row_run_ids(ctx, batch_id)
    assert submits(steps) == run_ids[:3]
    # A released run's submit names its app, so the claim can mark the send itself.
    assert [s.args[2] for s in steps if s.task == task_names.SUBMIT] == [{"app_id": "app"}] * 3
    # Held runs are never due for the sweeper; released ones are.
    due = {run_id for run_id, _ in ctx.ledger.due(clock.now + 3600)}
    assert due == set(run_ids[:3])
    assert tick(ctx, batch_id) == []  # no free slot: nothing more


def test_each_ended_run_releases_exactly_one_more(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    ctx, _, _ = harness()
    batch_id, _steps = make_batch(ctx, tmp_path, rows=5, limit=2)
    run_ids = row_run_ids(ctx, batch_id)

    end_run(ctx, run_ids[0])
    first = tick(ctx, batch_id)
    again = tick(ctx, batch_id)  # a duplicate tick releases nothing more

    assert submits(first) == [run_ids[2]]
    assert again == []
    assert batch_status(ctx, batch_id).in_flight == 2


def test_a_release_lost_mid_way_is_recovered_by_the_next_tick(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    # Given a release whose process died after taking the slot, before making the run due
    ctx, _, _ = harness()
    batch_id, _ = make_batch(ctx, tmp_path, rows=2, limit=1)
    run_ids = row_run_ids(ctx, batch_id)
    end_run(ctx, run_ids[0])
    ctx.redis.srem(ctx.keys.batch_inflight(batch_id), run_ids[0])
    ctx.redis.lpop(ctx.keys.batch_pending(batch_id))
    ctx.redis.sadd(ctx.keys.batch_inflight(batch_id), run_ids[1])

    # When the batch ticks again
    steps = tick(ctx, batch_id)

    # Then the held run is made due and submitted, within the limit
    assert submits(steps) == [run_ids[1]]
    assert batch_status(ctx, batch_id).in_flight == 1


def test_a_batch_finishes_once_with_one_callback(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    ctx, _, _ = harness()
    batch_id, _ = make_batch(ctx, tmp_path, rows=2, limit=5, callback_url="http://127.0.0.1:9/h")
    run_a, run_b = row_run_ids(ctx, batch_id)
    end_run(ctx, run_a)
    end_run(ctx, run_b, RunState.FAILED)

    first = tick(ctx, batch_id)
    second = tick(ctx, batch_id)

    assert [s.task for s in first] == [task_names.DELIVER_BATCH_CALLBACK]
    assert second == []
    status = batch_status(ctx, batch_id)
    assert status.finished
    assert status.record["counts"]["completed"] == 1
    assert status.record["counts"]["failed"] == 1


def test_a_duplicated_batch_callback_task_delivers_once(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    ctx, _, _ = harness(callback_retry_delays="0")
    batch_id, _ = make_batch(ctx, tmp_path, rows=1, limit=1, callback_url="http://127.0.0.1:9/h")
    end_run(ctx, row_run_ids(ctx, batch_id)[0])
    assert len(tick(ctx, batch_id)) == 1

    deliver_batch_callback(ctx, batch_id, 0)  # port 9: refused, no retries left
    deliver_batch_callback(ctx, batch_id, 0)  # the same message again

    record = batch_status(ctx, batch_id).record
    assert record["callback_state"] == "failed"
    assert len(record["callback_attempts"]) == 1


def test_a_finished_row_run_ticks_its_batch(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    ctx, _, _ = harness()
    batch_id, steps = make_batch(ctx, tmp_path, rows=1, limit=1)

    (poll,) = submit_step(ctx, submits(steps)[0], 0)
    finished = ctx.ledger.require(str(poll.args[0]))

    assert finished.state is RunState.SUBMITTED
    from worker.runs.finish import finish

    assert finish(ctx, finished.run_id, finished.token, RunState.COMPLETED) == [
        Next(task_names.BATCH_TICK, (batch_id,))
    ]


def test_a_batch_key_resumes_without_resubmitting_completed_rows(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    ctx, _, _ = harness()
    first_id, _ = make_batch(ctx, tmp_path, rows=3, limit=3, batch_key="nightly")
    done, failed, _ = row_run_ids(ctx, first_id)
    with pytest.raises(InvalidBatchError, match="still running"):
        make_batch(ctx, tmp_path, rows=3, limit=3, batch_key="nightly")
    end_run(ctx, done)
    end_run(ctx, failed, RunState.FAILED)
    end_run(ctx, row_run_ids(ctx, first_id)[2], RunState.CANCELED)

    second_id, steps = make_batch(ctx, tmp_path, rows=3, limit=3, batch_key="nightly")

    second_rows = row_run_ids(ctx, second_id)
    assert second_rows[0] == done
    assert set(submits(steps)) == set(second_rows[1:])
    assert done not in submits(steps)
    assert batch_status(ctx, second_id).record["reused"] == 1


# --- breaker -----------------------------------------------------------------------------------


def test_overages_of_submits_already_in_flight_do_not_double_the_backoff(
    harness: Callable[..., Harness],
) -> None:
    ctx, _, clock = harness(overage_pause=10.0, breaker_max_backoff=600.0)

    backoffs = [breaker.record_overage(ctx, "429") for _ in range(5)]  # five at once
    clock.now += 10.0
    probe = breaker.allow_submit(ctx)

    assert backoffs == [10.0] * 5
    assert probe.probe


def test_breaker_opens_on_overage_lets_one_probe_through_and_closes_on_success(
    harness: Callable[..., Harness],
) -> None:
    ctx, _, clock = harness(overage_pause=10.0, breaker_max_backoff=25.0)
    assert breaker.allow_submit(ctx).allowed

    assert breaker.record_overage(ctx, "429") == 10.0
    denied = breaker.allow_submit(ctx)
    clock.now += 10.0
    probe = breaker.allow_submit(ctx)
    second = breaker.allow_submit(ctx)

    assert not denied.allowed
    assert denied.wait == pytest.approx(10.0)
    assert probe.allowed
    assert probe.probe
    assert not second.allowed
    assert breaker.record_overage(ctx, "429") == 20.0  # the probe failed: backoff doubles
    clock.now += 20.0
    assert breaker.allow_submit(ctx).probe
    assert breaker.record_overage(ctx, "429") == 25.0  # up to the maximum
    assert breaker.record_success(ctx)
    assert breaker.allow_submit(ctx) == breaker.Decision(True)


def test_an_overage_pauses_every_submit_until_a_probe_succeeds(
    harness: Callable[..., Harness],
) -> None:
    from worker.errors import HatzCreditOverageError

    ctx, client, clock = harness(overage_pause=5.0, poll_jitter=0.0)
    first = ctx.ledger.create({"app_id": "app", "inputs": {"topic": "a"}})[0]
    second = ctx.ledger.create({"app_id": "app", "inputs": {"topic": "b"}})[0]
    client.runs = [HatzCreditOverageError(429, "credit overage")]

    (retry,) = submit_step(ctx, first, 0)
    (paused,) = submit_step(ctx, second, 0)

    assert client.calls == ["run"]  # the second run never reached the API
    assert breaker.breaker_state(ctx)["state"] == "open"
    assert "breaker" in ctx.ledger.require(second)["last_error"]
    clock.now += 5.0
    (poll,) = submit_step(ctx, second, int(paused.args[1]))
    assert poll.task == task_names.POLL
    assert breaker.breaker_state(ctx)["state"] == "closed"
    assert ctx.ledger.require(first).state is RunState.SUBMITTING  # waiting, not failed
    assert retry.task == task_names.SUBMIT


# --- API budget --------------------------------------------------------------------------------


def test_the_api_budget_gives_a_burst_of_one_second_then_refuses(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    budget = ApiBudget(fake_redis, "t:budget", 2.0, max_wait=0.0)

    budget.acquire()
    budget.acquire()
    with pytest.raises(HatzBudgetError) as caught:
        budget.acquire()

    assert 0 < caught.value.retry_after <= 0.5


def test_api_budget_is_wired_into_the_client_from_settings(fake_redis: fakeredis.FakeRedis) -> None:
    ctx = Context.from_settings(make_settings(api_max_rps=5), redis_client=fake_redis)

    assert isinstance(ctx.client._before_request, ApiBudget)
    ctx.client.close()


# --- schedules ------------------------------------------------------------------------------------


def test_schedules_load_from_a_toml_file_and_env_json(tmp_path: Path) -> None:
    path = tmp_path / "schedules.toml"
    path.write_text(
        '[[schedule]]\nname = "nightly"\ncron = "0 2 * * *"\napp_id = "app"\n'
        'source = "/data/{date:%Y-%m-%d}.csv"\n'
    )
    env = json.dumps([{"name": "hourly", "every": 3600, "app_id": "app", "overlap": "queue"}])

    schedules = load_schedules(make_settings(schedules_file=str(path), schedules=env))

    assert [(s.name, s.when()) for s in schedules] == [
        ("nightly", "cron 0 2 * * *"),
        ("hourly", "every 3600 s"),
    ]
    when = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    assert schedules[0].render_source(when) == "/data/2026-11-25.csv"


def test_invalid_schedules_list_every_problem() -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_schedules(
            [
                {"name": "a", "app_id": "x", "cron": "61 * * * *"},
                {"name": "b", "app_id": "x", "every": 5, "cron": "* * * * *", "overlap": "no"},
                {"name": "c", "every": 5, "color": 1},
            ]
        )
    text = str(caught.value)
    assert "schedule 'a': bad cron" in text
    assert "schedule 'b': give exactly one of cron or every" in text
    assert "schedule 'b': overlap must be" in text
    assert "schedule 'c': unknown field(s) color" in text
    assert "schedule 'c': app_id is required" in text


def schedule_ctx(harness: Callable[..., Harness], overlap: str) -> Context:
    spec = [
        {"name": "s", "every": 60, "app_id": "app", "inputs": {"topic": "x"}, "overlap": overlap}
    ]
    ctx, _, _ = harness(schedules=json.dumps(spec))
    return ctx


def test_a_schedule_slot_fires_once_even_if_beat_sends_it_twice(
    harness: Callable[..., Harness],
) -> None:
    ctx = schedule_ctx(harness, "queue")

    first = fire(ctx, "s")
    second = fire(ctx, "s")

    assert first.outcome == "fired"
    assert second.outcome == "duplicate"
    assert len(submits(first.steps)) == 1


def test_overlap_skip_does_not_start_a_second_batch(harness: Callable[..., Harness]) -> None:
    ctx = schedule_ctx(harness, "skip")
    first = fire(ctx, "s", reason="manual")

    second = fire(ctx, "s", reason="manual")

    assert second.outcome == "skipped_overlap"
    assert first.batch_id in second.error


def test_overlap_queue_fires_when_the_previous_batch_finishes(
    harness: Callable[..., Harness],
) -> None:
    ctx = schedule_ctx(harness, "queue")
    first = fire(ctx, "s", reason="manual")
    queued = fire(ctx, "s", reason="manual")
    end_run(ctx, row_run_ids(ctx, first.batch_id)[0])

    steps = tick(ctx, first.batch_id)

    assert queued.outcome == "queued"
    assert steps == [Next(task_names.FIRE_SCHEDULE, ("s", "queued"))]
    assert fire(ctx, "s", reason="queued").outcome == "fired"


def test_a_submit_reads_a_closed_breaker_with_its_claim_and_asks_it_only_when_open(
    harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, client, _ = harness(overage_pause=5.0, poll_jitter=0.0)
    asked: list[bool] = []
    allow = breaker.allow_submit

    def counted(c: Any) -> breaker.Decision:
        decision = allow(c)
        asked.append(decision.allowed)
        return decision

    monkeypatch.setattr(breaker, "allow_submit", counted)
    closed_run = ctx.ledger.create({"app_id": "app", "inputs": {"topic": "a"}})[0]
    assert [s.task for s in submit_step(ctx, closed_run, 0)] == [task_names.POLL]
    assert asked == []  # closed, as read in the claim's round trip: no second question

    breaker.record_overage(ctx, "429")
    open_run = ctx.ledger.create({"app_id": "app", "inputs": {"topic": "b"}})[0]
    (paused,) = submit_step(ctx, open_run, 0)
    assert asked == [False]  # open: the breaker itself decides (and may grant a probe)
    assert paused.task == task_names.SUBMIT
    assert client.calls == ["run"]


# --- an interrupted creation --------------------------------------------------------------


def _dies_at_row(ctx: Context, monkeypatch: pytest.MonkeyPatch, n: int, then: Any = None) -> None:
    """``ledger.create`` fails at its ``n``-th call (the creating process dies there),
    or, with ``then``, calls it there and goes on."""
    original = ctx.ledger.create
    calls = [0]

    def create(params: Any, **kw: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            if then is None:
                raise RuntimeError("worker killed mid-creation")
            then()
        return original(params, **kw)

    monkeypatch.setattr(ctx.ledger, "create", create)


def test_an_interrupted_creation_is_abandoned_after_the_grace_and_frees_its_batch_key(
    harness: Callable[..., Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, _, clock = harness()
    _dies_at_row(ctx, monkeypatch, 3)
    with pytest.raises(RuntimeError):
        make_batch(ctx, tmp_path, rows=5, limit=2, batch_key="nightly")
    (batch_id,) = [str(b) for b in ctx.redis.zrange(ctx.keys.active_batches, 0, -1)]
    made = [str(r) for r in ctx.redis.lrange(ctx.keys.batch_created(batch_id), 0, -1)]
    monkeypatch.undo()

    clock.now += 60  # a creation may still be going: left alone
    assert sweep_batches(ctx) == []
    assert batch_status(ctx, batch_id).record["state"] == "creating"
    with pytest.raises(InvalidBatchError, match="still running"):
        make_batch(ctx, tmp_path, rows=5, limit=2, batch_key="nightly")

    clock.now += CREATING_GRACE
    assert sweep_batches(ctx) == []

    status = batch_status(ctx, batch_id)
    assert status.record["state"] == "abandoned"
    assert "interrupted" in status.record["error"]
    assert status.finished  # a waiter stops waiting
    assert len(made) == 2
    assert [ctx.ledger.require(r).state for r in made] == [RunState.CANCELED] * 2
    assert batch_id not in [str(b) for b in ctx.redis.zrange(ctx.keys.active_batches, 0, -1)]
    # The batch key is free again: the rows are created anew.
    again, steps = make_batch(ctx, tmp_path, rows=5, limit=2, batch_key="nightly")
    assert len(row_run_ids(ctx, again)) == 5
    assert not set(row_run_ids(ctx, again)) & set(made)
    assert len(submits(steps)) == 2


def test_a_creation_that_outlives_the_grace_cancels_what_it_made_and_fails(
    harness: Callable[..., Harness], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, _, clock = harness()

    def abandoned_meanwhile() -> None:
        clock.now += CREATING_GRACE + 1
        sweep_batches(ctx)

    _dies_at_row(ctx, monkeypatch, 3, then=abandoned_meanwhile)

    with pytest.raises(InvalidBatchError, match="interrupted"):
        make_batch(ctx, tmp_path, rows=5, limit=2)

    (batch_id,) = [str(b) for b in ctx.redis.zrange(ctx.keys.batches, 0, -1)]
    assert batch_status(ctx, batch_id).record["state"] == "abandoned"  # not revived
    runs = [ctx.ledger.get(str(r)) for r in ctx.redis.zrange(ctx.keys.runs, 0, -1)]
    assert len(runs) == 5
    assert all(r is not None and r.state is RunState.CANCELED for r in runs)


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("rows.jsonl", b'{"topic": "a"}\n\x89PNG\r\n\x1a\n\xff\n', "not UTF-8 text"),
        ("rows.csv", b"topic\n\xff\xfe\n", "not UTF-8 text"),
        ("rows.csv", b'topic\n"' + b"x" * 200_000 + b'"\n', "longer than 131072 characters"),
    ],
)
def test_a_source_that_is_not_text_or_not_csv_is_an_invalid_batch(
    tmp_path: Path, name: str, content: bytes, needle: str
) -> None:
    source = tmp_path / name
    source.write_bytes(content)

    with pytest.raises(InvalidBatchError) as caught:
        read_source(source)

    assert needle in str(caught.value)
